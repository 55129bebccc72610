package awsemu

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/iam"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"github.com/aws/smithy-go"
)

const account = "123456789012"

func start(t *testing.T) *Server {
	t.Helper()
	e := New(time.Now, nil)
	e.AddUser(User{Account: account, Name: "host", AccessKeyID: "AKIAHOSTKEY000000001", SecretAccessKey: "host-secret"})
	e.PutRole(Role{Account: account, Name: "app", MaxSession: 6 * time.Hour})
	e.PutInstanceProfile(InstanceProfile{Account: account, Name: "app-profile", Role: "app"})
	s, err := Start(e)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func cfg(s *Server, key, secret, token string) aws.Config {
	return aws.Config{
		Region:           "eu-west-1",
		BaseEndpoint:     aws.String(s.URL),
		Credentials:      credentials.NewStaticCredentialsProvider(key, secret, token),
		RetryMaxAttempts: 1,
	}
}

func code(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}

func TestAssumeRoleAndCallerIdentity(t *testing.T) {
	s := start(t)
	ctx := context.Background()
	c := sts.NewFromConfig(cfg(s, "AKIAHOSTKEY000000001", "host-secret", ""))
	out, err := c.AssumeRole(ctx, &sts.AssumeRoleInput{
		RoleArn: aws.String("arn:aws:iam::123456789012:role/app"), RoleSessionName: aws.String("i-0123456789abcdef0"),
		DurationSeconds: aws.Int32(7200),
	})
	if err != nil {
		t.Fatal(err)
	}
	cr := out.Credentials
	if !strings.HasPrefix(*cr.AccessKeyId, "ASIA") || time.Until(*cr.Expiration) < 119*time.Minute {
		t.Errorf("credentials = %s expiring %v", *cr.AccessKeyId, cr.Expiration)
	}
	assumed := sts.NewFromConfig(cfg(s, *cr.AccessKeyId, *cr.SecretAccessKey, *cr.SessionToken))
	id, err := assumed.GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{})
	if err != nil {
		t.Fatal(err)
	}
	if want := "arn:aws:sts::123456789012:assumed-role/app/i-0123456789abcdef0"; *id.Arn != want {
		t.Errorf("caller = %s, want %s", *id.Arn, want)
	}
	// As STS: the role's unique id (the one IAM lists) and the session
	// name, the same for every session of the role.
	ip, err := iam.NewFromConfig(cfg(s, "AKIAHOSTKEY000000001", "host-secret", "")).GetInstanceProfile(ctx, &iam.GetInstanceProfileInput{InstanceProfileName: aws.String("app-profile")})
	if err != nil {
		t.Fatal(err)
	}
	want := *ip.InstanceProfile.Roles[0].RoleId + ":i-0123456789abcdef0"
	if *id.UserId != want || *out.AssumedRoleUser.AssumedRoleId != want {
		t.Errorf("caller's UserId %s, AssumeRole's AssumedRoleId %s; want %s", *id.UserId, *out.AssumedRoleUser.AssumedRoleId, want)
	}
	again, err := c.AssumeRole(ctx, &sts.AssumeRoleInput{RoleArn: aws.String("arn:aws:iam::123456789012:role/app"), RoleSessionName: aws.String("i-0123456789abcdef0")})
	if err != nil {
		t.Fatal(err)
	}
	if *again.AssumedRoleUser.AssumedRoleId != want {
		t.Errorf("a second session's AssumedRoleId %s, want %s", *again.AssumedRoleUser.AssumedRoleId, want)
	}
}

func TestSignatureChecked(t *testing.T) {
	s := start(t)
	ctx := context.Background()
	_, err := sts.NewFromConfig(cfg(s, "AKIAHOSTKEY000000001", "wrong-secret", "")).GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{})
	if code(err) != "SignatureDoesNotMatch" {
		t.Errorf("wrong secret: err = %v, want SignatureDoesNotMatch", err)
	}
	_, err = sts.NewFromConfig(cfg(s, "AKIAUNKNOWN000000000", "x", "")).GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{})
	if code(err) != "InvalidClientTokenId" {
		t.Errorf("unknown key: err = %v, want InvalidClientTokenId", err)
	}
}

func TestAssumeRoleRefusals(t *testing.T) {
	s := start(t)
	ctx := context.Background()
	s.PutRole(Role{Account: account, Name: "short"})
	s.PutRole(Role{Account: account, Name: "other", Trusted: []string{"arn:aws:iam::123456789012:user/someone-else"}})
	c := sts.NewFromConfig(cfg(s, "AKIAHOSTKEY000000001", "host-secret", ""))
	for _, tc := range []struct {
		role     string
		duration int32
		want     string
	}{
		{"app", 3600, ""},
		{"missing", 3600, "AccessDenied"},
		{"other", 3600, "AccessDenied"},
		{"short", 7200, "ValidationError"},
		{"app", 100, "ValidationError"},
	} {
		_, err := c.AssumeRole(ctx, &sts.AssumeRoleInput{
			RoleArn: aws.String("arn:aws:iam::123456789012:role/" + tc.role), RoleSessionName: aws.String("test"),
			DurationSeconds: aws.Int32(tc.duration),
		})
		if code(err) != tc.want {
			t.Errorf("AssumeRole %s for %ds: err = %v, want code %q", tc.role, tc.duration, err, tc.want)
		}
	}
}

func TestGetInstanceProfile(t *testing.T) {
	s := start(t)
	c := iam.NewFromConfig(cfg(s, "AKIAHOSTKEY000000001", "host-secret", ""))
	out, err := c.GetInstanceProfile(context.Background(), &iam.GetInstanceProfileInput{InstanceProfileName: aws.String("app-profile")})
	if err != nil {
		t.Fatal(err)
	}
	p := out.InstanceProfile
	if *p.Arn != "arn:aws:iam::123456789012:instance-profile/app-profile" || len(p.Roles) != 1 || *p.Roles[0].Arn != "arn:aws:iam::123456789012:role/app" {
		t.Errorf("profile = %s roles %v", *p.Arn, p.Roles)
	}
	_, err = c.GetInstanceProfile(context.Background(), &iam.GetInstanceProfileInput{InstanceProfileName: aws.String("nope")})
	if code(err) != "NoSuchEntity" {
		t.Errorf("missing profile: err = %v", err)
	}
}

func TestFaults(t *testing.T) {
	s := start(t)
	c := sts.NewFromConfig(cfg(s, "AKIAHOSTKEY000000001", "host-secret", ""))
	s.Inject(func(action string) *Fault { return &Fault{Status: 400, Code: "Throttling", Message: "Rate exceeded"} })
	_, err := c.GetCallerIdentity(context.Background(), &sts.GetCallerIdentityInput{})
	if code(err) != "Throttling" {
		t.Errorf("err = %v, want Throttling", err)
	}
	// Without a status: 400 with a code, 500 without, as AWS answers.
	for _, tc := range []struct {
		f      Fault
		code   string
		status int
	}{
		{Fault{Code: "Throttling"}, "Throttling", 400},
		{Fault{}, "InternalFailure", 500},
	} {
		s.Inject(func(string) *Fault { return &tc.f })
		_, err := c.GetCallerIdentity(context.Background(), &sts.GetCallerIdentityInput{})
		var re *awshttp.ResponseError
		if code(err) != tc.code || !errors.As(err, &re) || re.HTTPStatusCode() != tc.status {
			t.Errorf("%+v: err = %v, want %s with status %d", tc.f, err, tc.code, tc.status)
		}
	}
	s.Inject(func(string) *Fault { return &Fault{Hang: true} })
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err = c.GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("hang: err = %v, want deadline exceeded", err)
	}
	if n := s.Calls("GetCallerIdentity"); n != 4 {
		t.Errorf("calls = %d, want 4", n)
	}
}

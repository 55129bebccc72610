// Package profile resolves what the host's instance profile means right
// now: the IAM role attached to it (or none), with the profile's ARN and id
// for iam/info. A role ARN given directly needs no look-up.
package profile

import (
	"context"
	"crypto/sha256"
	"encoding/base32"
	"errors"
	"fmt"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/arn"
	"github.com/aws/aws-sdk-go-v2/service/iam"
	"github.com/aws/smithy-go"

	"github.com/imds-agent/imds-agent/internal/snapshot"
)

// IAMAPI is the part of the IAM client the resolver uses.
type IAMAPI interface {
	GetInstanceProfile(ctx context.Context, in *iam.GetInstanceProfileInput, optFns ...func(*iam.Options)) (*iam.GetInstanceProfileOutput, error)
}

// Target is what the configuration attaches to the host: an instance
// profile (ARN or bare name), a role ARN, or neither.
type Target struct {
	InstanceProfile string
	RoleARN         string
}

// None reports whether nothing is attached.
func (t Target) None() bool { return t.InstanceProfile == "" && t.RoleARN == "" }

// NeedsIAM reports whether resolving the target calls IAM.
func (t Target) NeedsIAM() bool { return t.InstanceProfile != "" }

func (t Target) String() string {
	switch {
	case t.InstanceProfile != "":
		return "instance profile " + t.InstanceProfile
	case t.RoleARN != "":
		return "role " + t.RoleARN
	}
	return "no role"
}

// ErrProfileNotFound means IAM has no instance profile by that name in the
// account of the source credentials.
var ErrProfileNotFound = errors.New("instance profile not found")

// ErrNoSuchProfile is IAM's own answer that it has no instance profile by
// that name (NoSuchEntity): deleted, or never made in the source
// credentials' account. It is an ErrProfileNotFound; the others (a profile
// of another path, letter case or account) are IAM's answers about a
// profile that does exist.
var ErrNoSuchProfile = fmt.Errorf("%w (IAM: NoSuchEntity)", ErrProfileNotFound)

// Resolve returns the role attached to t. attached is false when the
// target is empty or the instance profile holds no role: EC2's "no role
// attached". An error leaves the caller's previous answer standing.
func Resolve(ctx context.Context, client IAMAPI, t Target) (role snapshot.Role, attached bool, err error) {
	switch {
	case t.RoleARN != "":
		r, err := RoleFromARN(t.RoleARN)
		return r, err == nil, err
	case t.InstanceProfile == "":
		return snapshot.Role{}, false, nil
	}
	name, wantARN := t.InstanceProfile, ""
	if strings.HasPrefix(name, "arn:") {
		wantARN = name
		name = name[strings.LastIndexByte(name, '/')+1:]
	}
	out, err := client.GetInstanceProfile(ctx, &iam.GetInstanceProfileInput{InstanceProfileName: aws.String(name)})
	if err != nil {
		var ae smithy.APIError
		if errors.As(err, &ae) && ae.ErrorCode() == "NoSuchEntity" {
			return snapshot.Role{}, false, fmt.Errorf("iam:GetInstanceProfile %s: %w", name, ErrNoSuchProfile)
		}
		return snapshot.Role{}, false, fmt.Errorf("iam:GetInstanceProfile %s: %w", name, err)
	}
	p := out.InstanceProfile
	if p == nil {
		return snapshot.Role{}, false, fmt.Errorf("iam:GetInstanceProfile %s: the response holds no instance profile", name)
	}
	gotARN := aws.ToString(p.Arn)
	if wantARN != "" && gotARN != wantARN {
		if account(gotARN) == account(wantARN) {
			// IAM matches names without regard to path or letter case.
			return snapshot.Role{}, false, fmt.Errorf("instance profile %s: IAM's profile named %s is %s, with another path or letter case; write that ARN, or the name alone: %w", wantARN, name, gotARN, ErrProfileNotFound)
		}
		return snapshot.Role{}, false, fmt.Errorf("instance profile %s: the source credentials see %s instead; use credentials from the profile's account: %w", wantARN, gotARN, ErrProfileNotFound)
	}
	if len(p.Roles) == 0 {
		return snapshot.Role{ProfileARN: gotARN, ProfileID: aws.ToString(p.InstanceProfileId)}, false, nil
	}
	r, err := RoleFromARN(aws.ToString(p.Roles[0].Arn))
	if err != nil {
		return snapshot.Role{}, false, fmt.Errorf("instance profile %s: %w", gotARN, err)
	}
	r.ProfileARN = gotARN
	r.ProfileID = aws.ToString(p.InstanceProfileId)
	return r, true, nil
}

// ConfiguredAccount is the account a configuration names before any call
// to IAM: its role ARN's, else its instance profile's when that is given by
// ARN; "" when it names none (a bare profile name).
func ConfiguredAccount(roleARN, instanceProfile string) string {
	if roleARN != "" {
		return account(roleARN)
	}
	return account(instanceProfile)
}

// account is the account id of an ARN, "" if it is none.
func account(s string) string {
	a, err := arn.Parse(s)
	if err != nil {
		return ""
	}
	return a.AccountID
}

// RoleFromARN describes a role given by ARN. With no instance profile to
// name, iam/info shows a profile named after the role, as the EC2 console
// creates one, with a stable id derived from its ARN.
func RoleFromARN(roleARN string) (snapshot.Role, error) {
	a, err := arn.Parse(roleARN)
	if err != nil || a.Service != "iam" || !strings.HasPrefix(a.Resource, "role/") {
		return snapshot.Role{}, fmt.Errorf("%q is not a role ARN", roleARN)
	}
	name := a.Resource[strings.LastIndexByte(a.Resource, '/')+1:]
	profileARN := arn.ARN{Partition: a.Partition, Service: "iam", AccountID: a.AccountID, Resource: "instance-profile/" + name}.String()
	return snapshot.Role{
		Name:       name,
		ARN:        roleARN,
		AccountID:  a.AccountID,
		ProfileARN: profileARN,
		ProfileID:  SyntheticID("AIPA", profileARN),
	}, nil
}

// SyntheticID returns an IAM-style unique id (prefix plus 17 upper-case
// letters and digits) derived from seed.
func SyntheticID(prefix, seed string) string {
	sum := sha256.Sum256([]byte(seed))
	return prefix + base32.StdEncoding.EncodeToString(sum[:])[:17]
}

package profile

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iam"
	"github.com/aws/aws-sdk-go-v2/service/iam/types"
)

// iamWith answers GetInstanceProfile with one profile, whatever the name.
type iamWith struct{ arn string }

func (f iamWith) GetInstanceProfile(context.Context, *iam.GetInstanceProfileInput, ...func(*iam.Options)) (*iam.GetInstanceProfileOutput, error) {
	return &iam.GetInstanceProfileOutput{InstanceProfile: &types.InstanceProfile{
		Arn:               aws.String(f.arn),
		InstanceProfileId: aws.String("AIPAEXAMPLE"),
		Roles:             []types.Role{{Arn: aws.String("arn:aws:iam::123456789012:role/web")}},
	}}, nil
}

// TestResolveProfileARNMismatch: a configured ARN that IAM's answer does
// not match is refused, saying why: another path or letter case in the
// same account, or another account.
func TestResolveProfileARNMismatch(t *testing.T) {
	const want = "arn:aws:iam::123456789012:instance-profile/web"
	for _, tc := range []struct{ got, msg string }{
		{"arn:aws:iam::123456789012:instance-profile/team/web", "IAM's profile named web is arn:aws:iam::123456789012:instance-profile/team/web, with another path or letter case"},
		{"arn:aws:iam::210987654321:instance-profile/web", "use credentials from the profile's account"},
	} {
		_, attached, err := Resolve(context.Background(), iamWith{tc.got}, Target{InstanceProfile: want})
		if attached || !errors.Is(err, ErrProfileNotFound) || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("IAM answers %s: attached %v, err %v; want %q", tc.got, attached, err, tc.msg)
		}
	}
	role, attached, err := Resolve(context.Background(), iamWith{want}, Target{InstanceProfile: want})
	if err != nil || !attached || role.Name != "web" || role.ProfileARN != want {
		t.Errorf("matching ARN: %+v %v %v", role, attached, err)
	}
}

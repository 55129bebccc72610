package awsemu

import "encoding/xml"

// Response shapes of the AWS query protocol, as STS and IAM send them.

type responseMetadata struct {
	RequestID string `xml:"RequestId"`
}

type errorBody struct {
	Type    string `xml:"Type"`
	Code    string `xml:"Code"`
	Message string `xml:"Message"`
}

type errorResponse struct {
	XMLName   xml.Name  `xml:"ErrorResponse"`
	XMLNS     string    `xml:"xmlns,attr"`
	Error     errorBody `xml:"Error"`
	RequestID string    `xml:"RequestId"`
}

type stsCredentials struct {
	AccessKeyID     string `xml:"AccessKeyId"`
	SecretAccessKey string `xml:"SecretAccessKey"`
	SessionToken    string `xml:"SessionToken"`
	Expiration      string `xml:"Expiration"`
}

type assumedRoleUser struct {
	Arn           string `xml:"Arn"`
	AssumedRoleID string `xml:"AssumedRoleId"`
}

type assumeRoleResult struct {
	Credentials     stsCredentials  `xml:"Credentials"`
	AssumedRoleUser assumedRoleUser `xml:"AssumedRoleUser"`
}

type assumeRoleResponse struct {
	XMLName  xml.Name         `xml:"AssumeRoleResponse"`
	XMLNS    string           `xml:"xmlns,attr"`
	Result   assumeRoleResult `xml:"AssumeRoleResult"`
	Metadata responseMetadata `xml:"ResponseMetadata"`
}

type callerIdentity struct {
	Arn     string `xml:"Arn"`
	UserID  string `xml:"UserId"`
	Account string `xml:"Account"`
}

type getCallerIdentityResponse struct {
	XMLName  xml.Name         `xml:"GetCallerIdentityResponse"`
	XMLNS    string           `xml:"xmlns,attr"`
	Result   callerIdentity   `xml:"GetCallerIdentityResult"`
	Metadata responseMetadata `xml:"ResponseMetadata"`
}

type role struct {
	Path       string `xml:"Path"`
	RoleName   string `xml:"RoleName"`
	RoleID     string `xml:"RoleId"`
	Arn        string `xml:"Arn"`
	CreateDate string `xml:"CreateDate"`
}

type instanceProfile struct {
	Path                string `xml:"Path"`
	InstanceProfileName string `xml:"InstanceProfileName"`
	InstanceProfileID   string `xml:"InstanceProfileId"`
	Arn                 string `xml:"Arn"`
	CreateDate          string `xml:"CreateDate"`
	Roles               []role `xml:"Roles>member"`
}

type getInstanceProfileResult struct {
	InstanceProfile instanceProfile `xml:"InstanceProfile"`
}

type getInstanceProfileResponse struct {
	XMLName  xml.Name                 `xml:"GetInstanceProfileResponse"`
	XMLNS    string                   `xml:"xmlns,attr"`
	Result   getInstanceProfileResult `xml:"GetInstanceProfileResult"`
	Metadata responseMetadata         `xml:"ResponseMetadata"`
}

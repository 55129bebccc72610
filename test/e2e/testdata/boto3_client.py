"""Reads credentials and region the way an application on an EC2 instance
does (boto3's default chain, botocore's IMDS region provider), then proves
the credentials work by calling STS at the endpoint given on the command
line. Prints one JSON object."""
import json
import sys

import boto3
import botocore.utils

endpoint = sys.argv[1]
session = boto3.Session()
creds = session.get_credentials()
if creds is None:
    print(json.dumps({"error": "no credentials"}))
    sys.exit(1)
frozen = creds.get_frozen_credentials()
region = botocore.utils.IMDSRegionProvider(session._session).provide()
sts = session.client("sts", endpoint_url=endpoint, region_name=region or "us-east-1")
ident = sts.get_caller_identity()
print(json.dumps({
    "method": creds.method,
    "access_key_suffix": frozen.access_key[-4:],
    "region": region,
    "arn": ident["Arn"],
}))

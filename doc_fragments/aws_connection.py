"""Documentation of the AWS connection options shared by the project's boto3 modules."""

from __future__ import annotations


class ModuleDocFragment:
    # How a module reaches AWS: the usual boto3 credential chain unless keys or a profile are
    # given; endpoint_url points it at a test server (moto) or a VPC endpoint.
    DOCUMENTATION = r"""
options:
  region:
    description:
      - AWS region to work in, for example C(eu-west-1).
      - Defaults to the C(AWS_REGION) or C(AWS_DEFAULT_REGION) environment variable.
    type: str
  profile:
    description:
      - Named profile of the AWS config files to take credentials from.
      - Mutually exclusive with O(access_key).
    type: str
  endpoint_url:
    description:
      - URL of the service endpoint, for a VPC endpoint or a local test server; default AWS.
    type: str
  access_key:
    description:
      - AWS access key id. Default the usual boto3 chain (environment, profile, instance role).
    type: str
  secret_key:
    description:
      - AWS secret access key, with O(access_key). Never logged.
    type: str
  session_token:
    description:
      - AWS session token of temporary credentials, with O(access_key). Never logged.
    type: str
notes:
  - Credentials come from O(access_key) and O(secret_key), else O(profile), else boto3's own
    chain (C(AWS_ACCESS_KEY_ID)/C(AWS_SECRET_ACCESS_KEY), C(AWS_PROFILE), the instance's IAM
    role). None found is an error that says so before any change is made.
requirements:
  - boto3
  - botocore
"""

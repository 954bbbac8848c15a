"""s3:// URIs: objects in allowlisted buckets, read with the ambient AWS credentials (anonymous without any)."""

from __future__ import annotations

from urllib.parse import SplitResult, unquote

from bintally.sources.errors import SourceError, SourceProblem, invalid, refused, too_large
from bintally.sources.policy import SourcePolicy


class S3Reader:
    def __init__(self, policy: SourcePolicy):
        self.policy = policy
        self._client = None

    def client(self):
        if self._client is None:
            try:
                import boto3
                from botocore import UNSIGNED
                from botocore.config import Config
            except ImportError:
                raise SourceError(SourceProblem.UNSUPPORTED, "s3:// URIs need boto3 on the server (pip install boto3)") from None
            session = boto3.session.Session()
            signed = session.get_credentials() is not None  # no credentials: anonymous, for public buckets
            config = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=10,
                            **({} if signed else {"signature_version": UNSIGNED}))
            # boto3 honours AWS_ENDPOINT_URL (and AWS_ENDPOINT_URL_S3) itself
            self._client = session.client("s3", config=config)
        return self._client

    def read(self, uri: str, parts: SplitResult) -> bytes:
        bucket, key = parts.netloc, unquote(parts.path.lstrip("/"))
        if bucket not in self.policy.allow_s3_buckets:
            raise refused(f"{uri}: bucket {bucket!r} is not allowed (start the server with --allow-s3-bucket {bucket or 'NAME'})")
        if not key:
            raise invalid(f"{uri}: no object key")
        data = self.get_object(uri, bucket, key)
        if len(data) > self.policy.max_bytes:
            raise too_large(uri, self.policy.max_bytes)
        return data

    def get_object(self, uri: str, bucket: str, key: str) -> bytes:
        """At most max_bytes + 1 bytes of the object; S3's refusals as SourceErrors."""
        client = self.client()
        from botocore.exceptions import BotoCoreError, ClientError

        limit = self.policy.max_bytes
        try:
            answer = client.get_object(Bucket=bucket, Key=key)
            if answer.get("ContentLength", 0) > limit:
                answer["Body"].close()
                raise too_large(uri, limit)
            data = answer["Body"].read(limit + 1)
            answer["Body"].close()
            return data
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "error")
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code in ("NoSuchKey", "404", "NoSuchBucket") or status == 404:
                raise SourceError(SourceProblem.MISSING, f"{uri}: no such object") from None
            raise SourceError(SourceProblem.UNREACHABLE, f"{uri}: S3 refused the read ({code})") from None
        except BotoCoreError as e:
            raise SourceError(SourceProblem.UNREACHABLE, f"{uri}: S3 could not be reached ({e.__class__.__name__})") from None

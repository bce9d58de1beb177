"""An S3-compatible server on loopback for Quiver's object-store tests.

Usage: s3_server.py ADDRESS_FILE BUCKET LOCAL_DIR
Starts moto's S3 server on 127.0.0.1 (a free port), creates BUCKET, uploads every file under
LOCAL_DIR with its relative path as key, then writes host:port to ADDRESS_FILE and serves until
killed or until standard input closes.
"""

import os
import pathlib
import sys

import boto3
from moto.server import ThreadedMotoServer


def main():
    address_file, bucket, local_dir = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3])
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    s3 = boto3.client(
        "s3",
        endpoint_url=f"http://{host}:{port}",
        aws_access_key_id="quiver-test",
        aws_secret_access_key="quiver-test-secret",
        region_name="us-east-1",
    )
    s3.create_bucket(Bucket=bucket)
    for path in sorted(local_dir.rglob("*")):
        if path.is_file():
            s3.upload_file(str(path), bucket, path.relative_to(local_dir).as_posix())
    tmp = address_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{host}:{port}\n")
    os.replace(tmp, address_file)
    sys.stdin.read()  # until the test closes our stdin or kills us
    server.stop()


if __name__ == "__main__":
    main()

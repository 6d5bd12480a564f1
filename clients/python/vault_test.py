#!/usr/bin/env python3
"""A client in another language, from the proto alone.

Generates Python stubs from proto/ with grpcio-tools, then drives a running
`coffer server` through its Unix socket: creates a secret, attaches it to a
task, mounts the task, reads the file, rotates the secret and sees the file
change, and checks the status codes DESIGN section 6 names. It cleans up
after itself (unmount, detach, remove) and exits non-zero, with the reason
on stderr, on the first thing that is not as the proto says.

    python vault_test.py --socket DATA_DIR/coffer.sock --dir /run/secrets/web.1

server/tests/python.rs runs it against a server it starts.
"""

import argparse
import importlib
import os
import stat
import sys
import tempfile
import time

import grpc
import grpc_tools
from grpc_tools import protoc

# Every wait is bounded by this, polling what can be observed.
DEADLINE_SECONDS = 60
SECRET = "my_password"
DATA = b"password123yoyo"
ROTATED = b"password456yoyo"
TASK = "web.1"
TARGET = "db_password"


def generate(proto_root, out):
    """Python stubs for every .proto under proto_root, written under out."""
    protos = []
    for dirpath, _, names in os.walk(proto_root):
        protos += [
            os.path.relpath(os.path.join(dirpath, n), proto_root)
            for n in names
            if n.endswith(".proto")
        ]
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    args = [
        "protoc",
        f"-I{proto_root}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
    ] + sorted(protos)
    if protoc.main(args) != 0:
        raise SystemExit(f"protoc failed on {proto_root}")
    sys.path.insert(0, out)
    return {
        name: importlib.import_module(f"coffer.v1.{name}")
        for name in ["secrets_pb2", "secrets_pb2_grpc", "tasks_pb2", "tasks_pb2_grpc"]
    }


def expect_code(code, call, *args):
    """Calls call(*args), which must fail with the gRPC status code."""
    try:
        call(*args, timeout=DEADLINE_SECONDS)
    except grpc.RpcError as e:
        if e.code() != code:
            raise AssertionError(f"expected {code}, got {e.code()}: {e.details()}")
        return e.details()
    raise AssertionError(f"expected {code}, the call succeeded")


def check(condition, what):
    if not condition:
        raise AssertionError(what)


def run(pb, channel, mount_dir):
    s_pb, t_pb = pb["secrets_pb2"], pb["tasks_pb2"]
    secrets = pb["secrets_pb2_grpc"].SecretsStub(channel)
    tasks = pb["tasks_pb2_grpc"].TasksStub(channel)
    t = DEADLINE_SECONDS

    created = secrets.CreateSecret(
        s_pb.CreateSecretRequest(name=SECRET, data=DATA, labels={"env": "test"}), timeout=t
    ).secret
    check(created.id and created.name == SECRET and created.version == 1, f"created {created}")
    listed = secrets.ListSecrets(s_pb.ListSecretsRequest(), timeout=t).secrets
    check([s.id for s in listed] == [created.id], f"listed {listed}")
    shown = secrets.InspectSecret(s_pb.SecretRef(secret=SECRET), timeout=t)
    check(shown.secret.labels["env"] == "test", f"inspected {shown}")
    check(DATA not in shown.SerializeToString(), "inspect returned the secret's data")

    # The rules, with the codes the proto names.
    expect_code(
        grpc.StatusCode.INVALID_ARGUMENT,
        secrets.CreateSecret,
        s_pb.CreateSecretRequest(name="bad/name", data=DATA),
    )
    expect_code(
        grpc.StatusCode.ALREADY_EXISTS,
        secrets.CreateSecret,
        s_pb.CreateSecretRequest(name=SECRET.upper(), data=DATA),
    )
    expect_code(grpc.StatusCode.NOT_FOUND, secrets.InspectSecret, s_pb.SecretRef(secret="nope"))
    expect_code(
        grpc.StatusCode.INVALID_ARGUMENT,
        tasks.Attach,
        t_pb.AttachRequest(task=TASK, secrets=[t_pb.SecretAttachment(source=SECRET, target="../x")]),
    )

    attach = t_pb.AttachRequest(
        task=TASK,
        secrets=[t_pb.SecretAttachment(source=SECRET, target=TARGET, uid=0, gid=0, mode=0o400)],
    )
    task = tasks.Attach(attach, timeout=t).task
    check(
        task.name == TASK and [s.target for s in task.secrets] == [TARGET],
        f"attached {task}",
    )
    check(task.secrets[0].mode == 0o400, f"mode {task.secrets[0].mode:o}")

    mounted = tasks.Mount(t_pb.MountRequest(task=TASK, dir=mount_dir), timeout=t)
    try:
        check(mounted.files == 1, f"mounted {mounted}")
        path = os.path.join(mount_dir, TARGET)
        with open(path, "rb") as f:
            check(f.read() == DATA, f"{path} does not read the secret")
        mode = stat.S_IMODE(os.stat(path).st_mode)
        check(mode == 0o400, f"{path} has mode {mode:o}")
        print(f"python client: {path} reads the secret, mode {mode:o}")

        details = expect_code(
            grpc.StatusCode.FAILED_PRECONDITION,
            secrets.RemoveSecret,
            s_pb.SecretRef(secret=SECRET),
        )
        check(TASK in details, f"the refusal names no task: {details}")

        # The node's own task: delivery answers it, and `unchanged` to the
        # digest it gave.
        fetched = tasks.FetchSecrets(t_pb.FetchRequest(task=TASK), timeout=t)
        check([f.data for f in fetched.files] == [DATA], "FetchSecrets")
        same = tasks.FetchSecrets(t_pb.FetchRequest(task=TASK, held_digest=fetched.digest), timeout=t)
        check(same.unchanged and not same.files, f"held digest: {same}")

        rotated = secrets.RotateSecret(
            s_pb.RotateSecretRequest(secret=SECRET, data=ROTATED), timeout=t
        ).secret
        check(rotated.version == 2, f"rotated {rotated}")
        deadline = time.monotonic() + DEADLINE_SECONDS
        while True:
            with open(path, "rb") as f:
                if f.read() == ROTATED:
                    break
            check(time.monotonic() < deadline, f"{path} never read the rotated secret")
            time.sleep(0.02)
    finally:
        tasks.Unmount(t_pb.UnmountRequest(dir=mount_dir), timeout=t)
    check(not os.path.exists(os.path.join(mount_dir, TARGET)), "a file left after unmount")

    tasks.Detach(t_pb.TaskRef(task=TASK), timeout=t)
    secrets.RemoveSecret(s_pb.SecretRef(secret=SECRET), timeout=t)
    left = secrets.ListSecrets(s_pb.ListSecretsRequest(), timeout=t).secrets
    check(not left, f"left after rm: {left}")


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True, help="the server's coffer.sock")
    parser.add_argument("--dir", required=True, help="where to mount the task")
    parser.add_argument(
        "--proto", default=os.path.join(here, "..", "..", "proto"), help="the proto/ directory"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        pb = generate(os.path.abspath(args.proto), out)
        # The authority grpc would derive from a socket path is not a valid
        # HTTP/2 one.
        target = f"unix:{os.path.abspath(args.socket)}"
        options = [("grpc.default_authority", "localhost")]
        with grpc.insecure_channel(target, options=options) as channel:
            grpc.channel_ready_future(channel).result(timeout=DEADLINE_SECONDS)
            try:
                run(pb, channel, os.path.abspath(args.dir))
            except (AssertionError, grpc.RpcError) as e:
                detail = e.details() if isinstance(e, grpc.RpcError) else e
                print(f"python client: {detail}", file=sys.stderr)
                return 1
    print("python client: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())

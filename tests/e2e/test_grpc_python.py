"""gdnserve driven from Python (grpcio) as an independent client: health with
grpcio-health-checking, the service list with grpcio-reflection, and one
streamed completion through stubs generated from proto/ at test time.

Environment (tests/e2e/CMakeLists.txt): GDNSERVE_BIN, GDNSERVE_TEST_MODELS,
GDNSERVE_SOURCE_DIR.
"""

import importlib
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from grpc_tools import protoc

SOURCE = Path(os.environ.get("GDNSERVE_SOURCE_DIR", Path(__file__).resolve().parents[2]))


@pytest.fixture(scope="module")
def stubs():
    """generation_pb2 / generation_pb2_grpc compiled from proto/ into a temp dir."""
    with tempfile.TemporaryDirectory() as out:
        proto_dir = SOURCE / "proto"
        rc = protoc.main(["protoc", f"-I{proto_dir}", f"--python_out={out}", f"--grpc_python_out={out}",
                          str(proto_dir / "gdnserve/v1/generation.proto")])
        assert rc == 0, "grpc_tools.protoc failed"
        sys.path.insert(0, out)
        try:
            yield (importlib.import_module("gdnserve.v1.generation_pb2"),
                   importlib.import_module("gdnserve.v1.generation_pb2_grpc"))
        finally:
            sys.path.remove(out)


@pytest.fixture(scope="module")
def server():
    """The real gdnserve on a free loopback port; yields its address."""
    binary = os.environ["GDNSERVE_BIN"]
    model = Path(os.environ["GDNSERVE_TEST_MODELS"]) / "tiny"
    with tempfile.NamedTemporaryFile(prefix="gdnserve_py_", suffix=".log") as log:
        proc = subprocess.Popen([binary, "--model", str(model), "--host", "127.0.0.1", "--grpc-port", "0",
                                 "--http-port", "0", "--threads", "1"], stdout=log, stderr=subprocess.STDOUT)
        try:
            address = None
            deadline = time.monotonic() + 20
            while address is None:
                m = re.search(rb"listening on (127\.0\.0\.1:\d+)", Path(log.name).read_bytes())
                if m:
                    address = m.group(1).decode()
                elif proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("gdnserve did not start:\n" + Path(log.name).read_text())
                else:
                    time.sleep(0.01)
            yield address
        finally:
            proc.terminate()
            assert proc.wait(timeout=15) == 0, Path(log.name).read_text()


def wait_serving(channel, timeout=20.0):
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout
    while True:
        try:
            status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1).status
            if status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            pass
        assert time.monotonic() < deadline, "never SERVING"
        time.sleep(0.02)


def test_health_reflection_and_stream(server, stubs):
    pb, pb_grpc = stubs
    with grpc.insecure_channel(server) as channel:
        wait_serving(channel)
        health = health_pb2_grpc.HealthStub(channel)
        status = health.Check(health_pb2.HealthCheckRequest(service="gdnserve.v1.Generation"), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING

        reflection = ProtoReflectionDescriptorDatabase(channel)
        services = reflection.get_services()
        assert "gdnserve.v1.Generation" in services
        assert "grpc.health.v1.Health" in services
        # The descriptor of the service and its messages come through reflection too.
        pool = DescriptorPool(reflection)
        methods = {m.name for m in pool.FindServiceByName("gdnserve.v1.Generation").methods}
        assert methods == {"Generate", "Complete", "Tokenize", "Detokenize", "GetModelInfo", "ExportState",
                           "ImportState"}

        stub = pb_grpc.GenerationStub(channel)
        request = pb.GenerateRequest(
            text="Hello from Python", request_id="py-1",
            sampling=pb.SamplingParams(temperature=0.0),
            stop=pb.StopConditions(max_tokens=20, ignore_eos=True))
        responses = list(stub.Generate(request, timeout=30))
        assert responses and all(r.request_id == "py-1" for r in responses)
        text = "".join(s.text for r in responses for s in r.samples)
        tokens = [t for r in responses for s in r.samples for t in s.token_ids]
        assert len(tokens) == 20
        assert responses[-1].samples[-1].finish_reason == pb.FINISH_REASON_LENGTH
        assert responses[-1].usage.completion_tokens == 20
        complete = stub.Complete(request, timeout=30)
        assert complete.samples[0].text == text
        assert list(complete.samples[0].token_ids) == tokens

        with pytest.raises(grpc.RpcError) as err:
            stub.Complete(pb.GenerateRequest(text="x", sampling=pb.SamplingParams(top_p=2.0)), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "sampling.top_p" in err.value.details()


def test_api_key_guards_generation_but_not_health(stubs):
    """--api-key: Generation RPCs need "authorization: Bearer KEY" metadata;
    health stays open."""
    pb2, pb2_grpc = stubs
    binary = os.environ["GDNSERVE_BIN"]
    model = Path(os.environ["GDNSERVE_TEST_MODELS"]) / "tiny"
    with tempfile.NamedTemporaryFile(prefix="gdnserve_key_", suffix=".log") as log:
        proc = subprocess.Popen([binary, "--model", str(model), "--host", "127.0.0.1", "--grpc-port", "0",
                                 "--http-port", "0", "--threads", "1", "--api-key", "s3cret"],
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 20
            while not (m := re.search(rb"listening on (127\.0\.0\.1:\d+)", Path(log.name).read_bytes())):
                assert proc.poll() is None and time.monotonic() < deadline, Path(log.name).read_text()
                time.sleep(0.01)
            with grpc.insecure_channel(m.group(1).decode()) as channel:
                wait_serving(channel)
                stub = pb2_grpc.GenerationStub(channel)
                for metadata, code in [(None, grpc.StatusCode.UNAUTHENTICATED),
                                       ((("authorization", "Bearer wrong"),), grpc.StatusCode.UNAUTHENTICATED)]:
                    with pytest.raises(grpc.RpcError) as e:
                        stub.GetModelInfo(pb2.GetModelInfoRequest(), metadata=metadata, timeout=5)
                    assert e.value.code() == code
                ok = (("authorization", "Bearer s3cret"),)
                assert stub.GetModelInfo(pb2.GetModelInfoRequest(), metadata=ok, timeout=5).vocab_size > 0
                req = pb2.GenerateRequest(text="hi", stop=pb2.StopConditions(max_tokens=3))
                with pytest.raises(grpc.RpcError) as e:
                    list(stub.Generate(req, timeout=5))
                assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert sum(len(s.token_ids) for r in stub.Generate(req, metadata=ok, timeout=10)
                           for s in r.samples) == 3
        finally:
            proc.terminate()
            assert proc.wait(timeout=15) == 0, Path(log.name).read_text()

"""One CRI call: `cri.py SOCKET METHOD < request.json` prints the response as JSON.

METHOD is a RuntimeService or ImageService method name (RunPodSandbox, ExecSync, ListImages).
The request and the response are the proto3 JSON forms of runtime.v1's messages (field names as
in api.proto; bytes in base64), so the test builds requests with serde_json and reads replies
the same way, and this file knows nothing about the cases. A gRPC error exits 1 with its code
and details on stderr: the test shows them as they are.
"""
import json
import sys

import grpc
from google.protobuf import json_format

import api_pb2
import api_pb2_grpc


def main():
    socket, method = sys.argv[1], sys.argv[2]
    channel = grpc.insecure_channel("unix://" + socket)
    for service in ("RuntimeService", "ImageService"):
        desc = api_pb2.DESCRIPTOR.services_by_name[service]
        if method in desc.methods_by_name:
            break
    else:
        sys.exit(f"cri.py: no method {method}")
    m = desc.methods_by_name[method]
    request = json_format.ParseDict(json.load(sys.stdin), getattr(api_pb2, m.input_type.name)())
    stub = getattr(api_pb2_grpc, service + "Stub")(channel)
    try:
        response = getattr(stub, method)(request, timeout=120)
    except grpc.RpcError as e:
        sys.stderr.write(f"{method}: {e.code().name}: {e.details()}\n")
        sys.exit(1)
    print(json_format.MessageToJson(response, preserving_proto_field_name=True))


if __name__ == "__main__":
    main()

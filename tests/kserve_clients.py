"""KServe's Python SDK clients, unchanged, against a running server: run by
tests/test_oip_clients.py in the venv tests/kserve_env.sh makes (kserve pins protobuf < 7).
Usage: python tests/kserve_clients.py REST_HOST:PORT GRPC_HOST:PORT; prints one JSON line with
what each client got from the ``simple`` model (INPUT0 + INPUT1, INPUT0 - INPUT1)."""

import asyncio
import json
import sys

import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig

A = np.arange(16, dtype=np.int32)[None]
B = np.ones((1, 16), np.int32)


def request(binary: bool) -> InferRequest:
    inputs = [InferInput("INPUT0", [1, 16], "INT32"), InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_data_from_numpy(A, binary_data=binary)
    inputs[1].set_data_from_numpy(B, binary_data=binary)
    return InferRequest(model_name="simple", infer_inputs=inputs)


def outputs(response) -> dict:
    return {o.name: o.as_numpy().tolist() for o in response.outputs}


async def main(rest: str, grpc_url: str) -> dict:
    got = {}
    async with InferenceRESTClient(RESTConfig(protocol="v2", retries=0)) as client:
        base = f"http://{rest}"
        got["rest_live"] = await client.is_server_live(base)
        got["rest_ready"] = await client.is_server_ready(base)
        got["rest_model_ready"] = await client.is_model_ready(base, "simple")
        got["rest_json"] = outputs(await client.infer(base, request(False), "simple"))
        got["rest_binary"] = outputs(await client.infer(base, request(True), "simple"))
    async with InferenceRESTClient(RESTConfig(protocol="v1", retries=0)) as client:
        answer = await client.infer(f"http://{rest}", {"inputs": {"INPUT0": A.tolist(),
                                                                  "INPUT1": B.tolist()}},
                                    "simple")
        got["rest_v1"] = answer["outputs"]
    client = InferenceGRPCClient(grpc_url, retries=0)
    got["grpc_ready"] = await client.is_server_ready()
    got["grpc_model_ready"] = await client.is_model_ready("simple")
    got["grpc"] = outputs(await client.infer(request(True)))
    await client.close()
    return got


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2]))))

"""A scripted OpenAI-compatible model for tests/stack.rs: its first answer in a turn is a call
of the `exec` tool with the command in SCRIPTED_COMMAND; once the tool's result is in the
conversation it answers with that result, verbatim. It makes the agent's tool call
deterministic (SmolLM2 would not call a tool reliably); everything else in the turn is the
real gateway, its real sandbox backend, the docker shim and cagerun's broker."""
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMAND = os.environ["SCRIPTED_COMMAND"]


def answer(req):
    messages = req.get("messages", [])
    results = [m for m in messages if m.get("role") == "tool"]
    if results:
        content = results[-1].get("content")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        return {"content": "TOOL RESULT:\n" + str(content)}, "stop"
    names = [t.get("function", {}).get("name") for t in req.get("tools", [])]
    if "exec" not in names:
        return {"content": "NO EXEC TOOL; offered: " + ", ".join(map(str, names))}, "stop"
    call = {"index": 0, "id": "call_cagerun_1", "type": "function",
            "function": {"name": "exec", "arguments": json.dumps({"command": COMMAND})}}
    return {"tool_calls": [call]}, "tool_calls"


class Handler(BaseHTTPRequestHandler):
    def log_message(self, fmt, *args):
        sys.stderr.write("scripted-model: " + (fmt % args) + "\n")

    def send(self, code, body, ctype="application/json"):
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path.rstrip("/") in ("/health", "/v1/models"):
            self.send(200, json.dumps({"object": "list", "data": [{"id": "tool-caller", "object": "model"}]}))
        else:
            self.send(404, "{}")

    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        msg, finish = answer(req)
        sys.stderr.write("scripted-model: answering with " + finish + "\n")
        if not req.get("stream"):
            body = {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "tool-caller",
                    "choices": [{"index": 0, "message": {"role": "assistant", **msg}, "finish_reason": finish}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
            self.send(200, json.dumps(body))
            return
        chunks = [
            {"choices": [{"index": 0, "delta": {"role": "assistant", **msg}, "finish_reason": None}]},
            {"choices": [{"index": 0, "delta": {}, "finish_reason": finish}],
             "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}},
        ]
        out = ""
        for c in chunks:
            c.update({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": "tool-caller"})
            out += "data: " + json.dumps(c) + "\n\n"
        out += "data: [DONE]\n\n"
        self.send(200, out, "text/event-stream")


ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), Handler).serve_forever()

-- POST a small non-streaming chat completion (what the router overhead benchmark sends).
wrk.method = "POST"
wrk.body = '{"model":"mock-model","messages":[{"role":"user","content":"Hello"}],"max_tokens":16}'
wrk.headers["Content-Type"] = "application/json"

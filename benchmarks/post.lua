-- wrk script: POST a small chat completion (body and path set by the runner via env).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = os.getenv("BENCH_BODY") or '{"model":"bench","messages":[{"role":"user","content":"Say hello."}]}'

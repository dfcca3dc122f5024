-- A new key on every request: acquire, run the handler, complete.
dofile(os.getenv("BENCH_DIR") .. "/common.lua")
request = function()
  wrk.headers["Idempotency-Key"] = uuid4()
  return wrk.format()
end

-- New keys, with 10% of requests repeating one of the last 100 keys.
dofile(os.getenv("BENCH_DIR") .. "/common.lua")
local recent, n = {}, 0
request = function()
  local key
  if n > 0 and math.random() < 0.1 then
    key = recent[math.random(1, math.min(n, 100))]
  else
    key = uuid4()
    recent[n % 100 + 1] = key
    n = n + 1
  end
  wrk.headers["Idempotency-Key"] = key
  return wrk.format()
end

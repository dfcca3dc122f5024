-- No Idempotency-Key: the middleware must stay out of the way.
dofile(os.getenv("BENCH_DIR") .. "/common.lua")

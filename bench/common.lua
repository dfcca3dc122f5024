-- Shared by the wrk scripts: a requisition create as alice, and UUID v4 keys.
wrk.method = "POST"
wrk.path = "/api/requisitions"
wrk.body = '{"program":"Family Planning","facility":"Comfort Health Clinic"}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer alice"

math.randomseed(os.time() * 1000 + math.floor(os.clock() * 1000000))

function uuid4()
  local b = {}
  for i = 1, 16 do b[i] = math.random(0, 255) end
  b[7] = 64 + b[7] % 16   -- version 4
  b[9] = 128 + b[9] % 64  -- RFC 4122 variant
  return string.format("%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", unpack(b))
end

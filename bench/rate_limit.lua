-- wrk script: each request carries one of 1,000 client keys in X-Client, in rotation, so a
-- rate limit keyed on that header counts 1,000 distinct keys.
local counter = 0

request = function()
  counter = counter + 1
  local key = "client-" .. (counter % 1000)
  return wrk.format("GET", wrk.path, { ["Host"] = "bench.local", ["X-Client"] = key })
end

-- POST a body of its own on every request: `wrk ... -s wrk_unique.lua URL -- BODY NONCE` sends
-- BODY (JSON) with its "{n}" replaced by NONCE, the thread's number and a count, so no two
-- requests of one run, nor of two runs with different nonces, are the same (a cache miss each).
local threads = 0
local head, tail, prefix
local sent = 0

function setup(thread)
  thread:set("id", threads)
  threads = threads + 1
end

function init(args)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  local at = string.find(args[1], "{n}", 1, true)
  head = string.sub(args[1], 1, at - 1)
  tail = string.sub(args[1], at + 3)
  prefix = args[2] .. "-" .. id .. "-"
end

function request()
  sent = sent + 1
  return wrk.format(nil, nil, nil, head .. prefix .. sent .. tail)
end

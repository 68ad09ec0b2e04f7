-- POST a request: `wrk ... -s wrk_post.lua URL -- BODY` sends BODY (JSON) to URL on every request;
-- without BODY, the plain chat completion request.
local default = '{"model":"bench","messages":[{"role":"user","content":"hi"}]}'
local req

function init(args)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.body = args[1] or default
  req = wrk.format()
end

function request()
  return req
end

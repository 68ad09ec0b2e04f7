-- POST a chat completion request; `wrk ... -s wrk_post.lua -- stream` asks for the SSE stream.
local body = '{"model":"bench","messages":[{"role":"user","content":"hi"}]}'
local stream_body = '{"model":"bench","messages":[{"role":"user","content":"hi"}],"stream":true}'
local req

function init(args)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.body = args[1] == "stream" and stream_body or body
  req = wrk.format()
end

function request()
  return req
end

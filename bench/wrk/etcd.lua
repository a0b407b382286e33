-- wrk requests to an etcd member's v3 HTTP gateway; the first script argument picks them:
--   put FIRST              POST /v3/kv/put, key "users/<id>" for a new id each time, value the user document
--   range LEVEL LO HI      POST /v3/kv/range of "users/N", N uniform in [LO, HI];
--                          LEVEL serializable (the member's own state) or linearizable (etcd's default)
dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "common.lua")

function init(args)
  local mode = args[1]
  if mode == "put" then
    local id = tonumber(args[2]) + thread_index * ID_STRIDE
    next_request = function()
      id = id + 1
      local body = string.format('{"key":"%s","value":"%s"}', base64("users/" .. id), base64(user_json(id)))
      return wrk.format("POST", "/v3/kv/put", HEADERS, body)
    end
  elseif mode == "range" then
    local serializable = tostring(args[2] == "serializable")
    local pick = key_picker(tonumber(args[3]), tonumber(args[4]))
    next_request = function()
      local body = string.format('{"key":"%s","serializable":%s}', base64("users/" .. pick()), serializable)
      return wrk.format("POST", "/v3/kv/range", HEADERS, body)
    end
  else
    error("etcd.lua: unknown mode " .. tostring(mode))
  end
end

-- wrk requests to a docraft dispatcher; the first script argument picks them:
--   insert FIRST                 POST /insert_user, a new user each time (ids as in common.lua)
--   get LEVEL LO HI              GET /get_user?id=N&consistency=LEVEL, N uniform in [LO, HI]
--   scatter LEVEL COUNTRY...     GET /get_user?country=C&limit=10&consistency=LEVEL, cycling through the countries
dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "common.lua")

local function urlencode(text)
  return (text:gsub("[^%w%-_.~]", function(c) return string.format("%%%02X", c:byte()) end))
end

function init(args)
  local mode = args[1]
  if mode == "insert" then
    local id = tonumber(args[2]) + thread_index * ID_STRIDE
    next_request = function()
      id = id + 1
      return wrk.format("POST", "/insert_user", HEADERS, user_json(id))
    end
  elseif mode == "get" then
    local prefix = "/get_user?consistency=" .. args[2] .. "&id="
    local pick = key_picker(tonumber(args[3]), tonumber(args[4]))
    next_request = function()
      return wrk.format("GET", prefix .. pick(), HEADERS)
    end
  elseif mode == "scatter" then
    local paths = {}
    for i = 3, #args do
      paths[#paths + 1] = "/get_user?limit=10&consistency=" .. args[2] .. "&country=" .. urlencode(args[i])
    end
    local turn = thread_index
    next_request = function()
      turn = turn + 1
      return wrk.format("GET", paths[turn % #paths + 1], HEADERS)
    end
  else
    error("docraft.lua: unknown mode " .. tostring(mode))
  end
end

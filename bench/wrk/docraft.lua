-- wrk requests to a docraft dispatcher (or a replica: any of them routes); the first script argument picks them:
--   insert FIRST                 POST /insert_user, a new user each time (ids as in common.lua)
--   get LEVEL LO HI              GET /get_user?id=N&consistency=LEVEL, N uniform in [LO, HI]
--   scatter LEVEL COUNTRY...     GET /get_user?country=C&limit=10&consistency=LEVEL, cycling through the countries
--   insert_from FILE THREADS     POST /insert_user of the ids in FILE (one a line): thread t takes lines t+1,
--                                t+1+THREADS, ...; past the end it starts again (the repeats fail as conflicts)
--   get_from LEVEL FILE          GET /get_user?id=N&consistency=LEVEL, N drawn uniformly from FILE's ids
dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "common.lua")

local function urlencode(text)
  return (text:gsub("[^%w%-_.~]", function(c) return string.format("%%%02X", c:byte()) end))
end

local function read_ids(path)
  local ids = {}
  for line in io.lines(path) do
    ids[#ids + 1] = tonumber(line)
  end
  if #ids == 0 then
    error("docraft.lua: no ids in " .. path)
  end
  return ids
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
  elseif mode == "insert_from" then
    local ids, threads = read_ids(args[2]), tonumber(args[3])
    local line = thread_index + 1 - threads
    next_request = function()
      line = line + threads
      if line > #ids then
        line = thread_index + 1
      end
      return wrk.format("POST", "/insert_user", HEADERS, user_json(ids[line]))
    end
  elseif mode == "get_from" then
    local prefix = "/get_user?consistency=" .. args[2] .. "&id="
    local ids = read_ids(args[3])
    local pick = key_picker(1, #ids)
    next_request = function()
      return wrk.format("GET", prefix .. ids[pick()], HEADERS)
    end
  else
    error("docraft.lua: unknown mode " .. tostring(mode))
  end
end

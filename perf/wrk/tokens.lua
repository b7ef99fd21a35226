-- wrk script: every request carries `Authorization: Bearer <token>`, rotating over a pool of
-- tokens read from a file, one token per line. Used by perf/run.sh as
--   wrk ... -s perf/wrk/tokens.lua URL -- TOKEN_FILE
-- Each wrk thread pre-builds one request per token at start-up, so the Lua cost per request
-- is a table lookup, the same for every target.

local requests = {}
local count = 0
local next_index = 1

function init(args)
    local path = args[1]
    if path == nil or path == "" then
        error("tokens.lua: give the token file after the URL: wrk ... URL -- TOKEN_FILE")
    end
    local f = assert(io.open(path, "r"))
    for line in f:lines() do
        local token = line:match("^%s*(.-)%s*$")
        if token ~= "" then
            count = count + 1
            requests[count] = wrk.format(nil, nil, { ["Authorization"] = "Bearer " .. token })
        end
    end
    f:close()
    if count == 0 then
        error("tokens.lua: no token in " .. path)
    end
    -- Threads start at different places in the pool, so that they don't walk it in step.
    local id = tonumber(tostring(wrk.thread):match("0x(%x+)") or "0", 16) or 0
    next_index = (id % count) + 1
end

function request()
    local r = requests[next_index]
    next_index = next_index + 1
    if next_index > count then
        next_index = 1
    end
    return r
end

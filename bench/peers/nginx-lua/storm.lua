-- A wrk script for a purchase storm on the peer:
--
--   wrk -t2 -c32 -d2s -s bench/peers/nginx-lua/storm.lua \
--       http://127.0.0.1:PORT/api/v1/sales/SALE_UUID/purchase [-- BUYERS]
--
-- Every request carries a new Idempotency-Key; X-User-Id turns over BUYERS
-- buyers per wrk thread (default 1000), so buyers come back and meet their
-- limit. At the end it prints how many answers had each status.

local buyers = 1000
local n = 0
local threads = {}

-- Runs in the main Lua state; thread:set gives each thread's state its
-- own global thread_id (a global: a local here would stay 0 in all).
local started = 0
function setup(thread)
    started = started + 1
    thread:set("thread_id", started)
    table.insert(threads, thread)
end

function init(args)
    assert(thread_id, "storm.lua: no thread_id (setup did not run)")
    if args[1] then
        buyers = tonumber(args[1])
    end
    for _, s in ipairs({ 201, 400, 401, 404, 409, 413, 500, 503 }) do
        _G["s" .. s] = 0
    end
    s_other = 0
    replayed = 0
end

local body = '{"quantity":1}'

function request()
    n = n + 1
    local headers = {
        ["X-User-Id"] = "buyer-" .. thread_id .. "-" .. (n % buyers),
        ["Idempotency-Key"] = "storm-" .. thread_id .. "-" .. n,
        ["Content-Type"] = "application/json",
    }
    return wrk.format("POST", nil, headers, body)
end

function response(status, headers, body)
    if headers["idempotent-replayed"] or headers["Idempotent-Replayed"] then
        replayed = replayed + 1
    end
    local name = "s" .. status
    if _G[name] ~= nil then
        _G[name] = _G[name] + 1
    else
        s_other = s_other + 1
    end
end

function done(summary, latency, requests)
    local line = {}
    for _, s in ipairs({ 201, 400, 401, 404, 409, 413, 500, 503 }) do
        local total = 0
        for _, t in ipairs(threads) do
            total = total + (t:get("s" .. s) or 0)
        end
        if total > 0 then
            table.insert(line, s .. "=" .. total)
        end
    end
    local other, again = 0, 0
    for _, t in ipairs(threads) do
        other = other + (t:get("s_other") or 0)
        again = again + (t:get("replayed") or 0)
    end
    if other > 0 then
        table.insert(line, "other=" .. other)
    end
    table.insert(line, "(replayed: " .. again .. ")")
    io.write("statuses: " .. table.concat(line, " ") .. "\n")
end

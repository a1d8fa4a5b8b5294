-- The purchase handler of the nginx + Lua + Redis peer (see README.md).
--
-- One request: check the buyer header, the Idempotency-Key and the body,
-- read the sale's per-user limit (cached in the shared dict for
-- limit_ttl seconds), then run flashmall's own reserve script on Redis by
-- EVALSHA and map its result to an HTTP answer. Nothing is written
-- anywhere but Redis.

local resp = require "resp"

local ngx = ngx
local null = ngx.null
local byte = string.byte
local find = string.find
local format = string.format
local gsub = string.gsub
local lower = string.lower
local match = string.match
local sub = string.sub
local random = math.random
local floor = math.floor
local tonumber = tonumber
local tostring = tostring
local type = type

local M = {}

-- Set by M.init (in the master, before the workers fork) from the values
-- nginx.conf passes in.
local cfg
-- The reserve script's text and its SHA-1 (hex), as Redis names it.
local script_text
local script_sha

-- Longest accepted Idempotency-Key and X-User-Id, as flashmall's engine.
local MAX_KEY = 128

-- Runs from init_by_lua_block. opts:
--   script         path of engine/src/front/scripts/reserve.lua
--   redis_host, redis_port
--   prefix         key prefix ("fm", the engine's default)
--   max_quantity   largest quantity one purchase may ask for
--   limit_ttl      seconds a sale's limit (or its absence) stays cached
--   pool_size, backlog, timeout_ms   Redis connection pool and timeouts
function M.init(opts)
    local f = assert(io.open(opts.script, "rb"))
    script_text = f:read("*a")
    f:close()
    assert(#script_text > 0, "the reserve script is empty: " .. opts.script)
    cfg = opts
    cfg.redis_opts = {
        connect_timeout = opts.timeout_ms,
        send_timeout = opts.timeout_ms,
        read_timeout = opts.timeout_ms,
        pool_size = opts.pool_size,
        backlog = opts.backlog,
    }
end

local function hex(bin)
    return (gsub(bin, ".", function(c)
        return format("%02x", byte(c))
    end))
end

-- Runs from init_worker_by_lua_block, in every worker.
function M.init_worker()
    -- Workers fork from one master: without a seed of its own each would
    -- draw the same reservation ids.
    math.randomseed(ngx.worker.pid() * 1000 + floor(ngx.now() * 1000) % 1000000007)
    -- The SHA-1 Redis will give the script; EVALSHA with it, and on
    -- NOSCRIPT (a Redis that restarted or flushed its scripts) load it.
    script_sha = hex(ngx.sha1_bin(script_text))
end

-- JSON string escaping for the few strings that are not fixed text.
local escapes = { ['"'] = '\\"', ["\\"] = "\\\\", ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t" }
local function json_string(s)
    s = gsub(s, '[%c"\\]', function(c)
        return escapes[c] or format("\\u%04x", byte(c))
    end)
    return '"' .. s .. '"'
end

local function answer(status, body, replayed)
    ngx.status = status
    ngx.header["Content-Type"] = "application/json"
    if replayed then
        ngx.header["idempotent-replayed"] = "true"
    end
    ngx.print(body)
    return ngx.exit(status)
end

-- flashmall's error body: {"error":{"code":...,"message":...}}.
local function refuse(status, code, message)
    if status == 503 then
        ngx.header["Retry-After"] = "1"
    end
    return answer(status, '{"error":{"code":"' .. code .. '","message":' .. json_string(message) .. "}}")
end

-- A new reservation id, shaped as a random (version 4) UUID.
local function new_id()
    return format(
        "%04x%04x-%04x-4%03x-%04x-%04x%04x%04x",
        random(0, 0xffff), random(0, 0xffff), random(0, 0xffff), random(0, 0xfff),
        0x8000 + random(0, 0x3fff), random(0, 0xffff), random(0, 0xffff), random(0, 0xffff)
    )
end

-- The sale id in the engine's form (lowercase, hyphenated), or nil. Takes
-- the forms the engine's Uuid::try_parse takes: hyphenated, 32 hex digits,
-- {braced} and urn:uuid:.
local function sale_id_of(raw)
    local s = lower(raw)
    s = match(s, "^urn:uuid:(.*)$") or match(s, "^{(.*)}$") or s
    if #s == 32 and not find(s, "[^0-9a-f]") then
        return sub(s, 1, 8) .. "-" .. sub(s, 9, 12) .. "-" .. sub(s, 13, 16) .. "-"
            .. sub(s, 17, 20) .. "-" .. sub(s, 21, 32)
    end
    if #s == 36 and match(s, "^%x%x%x%x%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$") then
        return s
    end
    return nil
end

-- 1 to MAX_KEY visible ASCII characters (0x21-0x7e), as the engine checks
-- the Idempotency-Key.
local function visible_ascii(s)
    return s ~= nil and #s >= 1 and #s <= MAX_KEY and not find(s, "[^\33-\126]")
end

-- The body's quantity: the body is empty, {} or {"quantity": N} with N a
-- JSON integer. Returns the number, or nil and a message. Hand-parsed (no
-- JSON library): any other field or shape is refused, as the engine's
-- deny_unknown_fields refuses it.
local WS = "[ \t\r\n]*"
local function quantity_of(body)
    if body == nil or match(body, "^" .. WS .. "$") then
        return 1
    end
    if match(body, "^" .. WS .. "{" .. WS .. "}" .. WS .. "$") then
        return 1
    end
    local digits = match(body, "^" .. WS .. "{" .. WS .. '"quantity"' .. WS .. ":" .. WS .. "(%-?%d+)" .. WS .. "}" .. WS .. "$")
    if not digits then
        return nil, 'the request body must be a JSON object {"quantity": N} with N an integer'
    end
    if match(digits, "^%-?0%d") then
        return nil, "the quantity is not a valid JSON number (leading zero)"
    end
    -- Past 15 digits a double is no longer exact; anything that long is
    -- out of range anyway.
    if #digits > 15 then
        return nil, format("quantity must be an integer from 1 to %d", cfg.max_quantity)
    end
    return tonumber(digits)
end

-- The body, or nil and a message (a body nginx spilled to a file is
-- larger than client_body_buffer_size: too large for a purchase).
local function read_body()
    ngx.req.read_body()
    local body = ngx.req.get_body_data()
    if body == nil and ngx.req.get_body_file() ~= nil then
        return nil, "the request body is too large"
    end
    return body
end

-- The sale's per-user limit: a number, false for an unknown sale, or nil
-- and a message when Redis failed.
local function limit_of(conn, sale)
    local dict = ngx.shared.peer
    local cached = dict:get(sale)
    if cached ~= nil then
        return cached ~= 0 and cached or false
    end
    local v, err = resp.call(conn, "GET", "peer:{" .. sale .. "}:limit")
    if v == nil then
        return nil, err
    end
    local limit = v ~= null and tonumber(v) or nil
    if limit ~= nil and limit < 1 then
        limit = nil
    end
    -- 0 stands for "no such sale" in the dict.
    dict:set(sale, limit or 0, cfg.limit_ttl)
    return limit or false
end

-- EVALSHA of the reserve script; on NOSCRIPT loads it and tries once more.
local function reserve(conn, keys, args)
    local res, err, kind = resp.call(conn, "EVALSHA", script_sha, 6,
        keys[1], keys[2], keys[3], keys[4], keys[5], keys[6],
        args[1], args[2], args[3], args[4], args[5], args[6], args[7])
    if res == nil and kind == "redis" and sub(err, 1, 8) == "NOSCRIPT" then
        local sha
        sha, err, kind = resp.call(conn, "SCRIPT", "LOAD", script_text)
        if sha == nil then
            return nil, err, kind
        end
        script_sha = sha
        res, err, kind = resp.call(conn, "EVALSHA", script_sha, 6,
            keys[1], keys[2], keys[3], keys[4], keys[5], keys[6],
            args[1], args[2], args[3], args[4], args[5], args[6], args[7])
    end
    return res, err, kind
end

local function reserved_body(reservation_id, sale, quantity, remaining)
    local tail = remaining ~= nil and format(',"remaining":%d', remaining) or ""
    return format('{"reservation_id":"%s","sale_id":"%s","quantity":%d,"status":"reserved"%s}',
        reservation_id, sale, quantity, tail)
end

-- content_by_lua for POST /api/v1/sales/{raw_sale}/purchase. The checks
-- run in the engine's order: caller, Idempotency-Key, body, quantity,
-- sale, quantity against the limit, then the script.
function M.purchase(raw_sale)
    if ngx.req.get_method() ~= "POST" then
        ngx.header["Allow"] = "POST"
        return refuse(405, "invalid_request", "use POST")
    end
    local user = ngx.var.http_x_user_id
    if user == nil or user == "" then
        return refuse(401, "unauthenticated", "the X-User-Id header is required")
    end
    if not visible_ascii(user) then
        return refuse(401, "unauthenticated", "the X-User-Id header must be 1 to 128 visible ASCII characters")
    end
    local key = ngx.var.http_idempotency_key
    if key == nil then
        return refuse(400, "invalid_request", "the Idempotency-Key header is required")
    end
    if not visible_ascii(key) then
        return refuse(400, "invalid_request", "the Idempotency-Key header must be 1 to 128 visible ASCII characters")
    end
    local body, berr = read_body()
    if berr then
        return refuse(413, "payload_too_large", berr)
    end
    local quantity, qerr = quantity_of(body)
    if not quantity then
        return refuse(400, "invalid_request", qerr)
    end
    if quantity < 1 or quantity > cfg.max_quantity then
        return refuse(400, "invalid_request", format("quantity must be an integer from 1 to %d", cfg.max_quantity))
    end
    local sale = sale_id_of(raw_sale)
    if not sale then
        return refuse(404, "sale_not_found", "no such sale")
    end

    local conn, err = resp.connect(cfg.redis_host, cfg.redis_port, cfg.redis_opts)
    if not conn then
        ngx.log(ngx.WARN, "redis connect: ", err)
        return refuse(503, "unavailable", "the stock store is unavailable, retry with the same Idempotency-Key")
    end
    local limit
    limit, err = limit_of(conn, sale)
    if limit == nil then
        resp.close(conn)
        ngx.log(ngx.WARN, "redis GET limit: ", err)
        return refuse(503, "unavailable", "the stock store is unavailable, retry with the same Idempotency-Key")
    end
    if limit == false then
        resp.release(conn)
        return refuse(404, "sale_not_found", "no such sale")
    end
    if quantity > limit then
        resp.release(conn)
        return refuse(409, "limit_exceeded", format("at most %d units per buyer", limit))
    end

    local tag = cfg.prefix .. ":{" .. sale .. "}:"
    local keys = { tag .. "stock", tag .. "buyers", tag .. "idem", tag .. "stream", tag .. "pending", tag .. "rebuild" }
    local reservation_id = new_id()
    local args = {
        user,
        #user .. ":" .. user .. ":" .. key,
        tostring(quantity),
        tostring(limit),
        reservation_id,
        format("%d", floor(ngx.now() * 1000)),
        key,
    }
    local res, kind
    res, err, kind = reserve(conn, keys, args)
    if res == nil then
        if kind == "redis" then
            resp.release(conn)
        end
        -- After a lost connection the script may have run: the same
        -- Idempotency-Key gets its answer on a retry.
        ngx.log(ngx.WARN, "redis EVALSHA: ", err)
        return refuse(503, "unavailable", "the stock store is unavailable, retry with the same Idempotency-Key")
    end
    resp.release(conn)

    local verdict = type(res) == "table" and res[1] or nil
    if verdict == 0 then
        return answer(201, reserved_body(reservation_id, sale, quantity, res[2]))
    elseif verdict == 1 then
        -- The first answer again: "reservation_id|quantity".
        local first, q = match(tostring(res[2]), "^([^|]+)|(%d+)$")
        if not first then
            ngx.log(ngx.ERR, "unreadable idempotency record: ", tostring(res[2]))
            return refuse(500, "internal", "unreadable idempotency record")
        end
        return answer(201, reserved_body(first, sale, tonumber(q)), true)
    elseif verdict == 2 then
        return refuse(409, "limit_exceeded", format("at most %d units per buyer (%d held)", limit, res[2]))
    elseif verdict == 3 then
        return refuse(409, "sold_out", "sold out")
    elseif verdict == 4 or verdict == 5 then
        return refuse(503, "unavailable", "the sale's stock is not loaded, retry with the same Idempotency-Key")
    end
    ngx.log(ngx.ERR, "unexpected reserve script result")
    return refuse(500, "internal", "unexpected reserve script result")
end

return M

-- A small Redis client for ngx_lua cosockets: RESP2 only, one command at
-- a time, no pipelining, no pub/sub. Written for the peer's purchase path;
-- Debian ships no lua-resty-redis.
--
--   local conn, err = resp.connect(host, port, opts)
--   local reply, err, kind = resp.call(conn, "GET", key)
--   resp.release(conn)   -- back to the pool (or resp.close(conn))
--
-- A reply is a Lua value: an integer reply is a number, a simple string or
-- a bulk string is a string, a null bulk string or null array is ngx.null,
-- an array is a table (1-based). An error reply nested in an array becomes
-- {err = "message"}.
--
-- resp.call returns nil, message, kind on failure, where kind is
--   "redis"  Redis answered with an error reply (message is its text, for
--            example "NOSCRIPT No matching script..."); the connection is
--            still in step and may be reused;
--   "io"     the connection failed (connect, send, read, timeout) or the
--            reply could not be parsed; the connection is closed, because
--            an unread or half-read reply would answer the next command.
-- After an "io" failure the command may or may not have run on Redis.

local tcp = ngx.socket.tcp
local null = ngx.null
local byte = string.byte
local sub = string.sub
local tonumber = tonumber
local tostring = tostring
local type = type
local select = select

local M = {}

-- RESP type bytes.
local PLUS, MINUS, COLON, DOLLAR, STAR = byte("+"), byte("-"), byte(":"), byte("$"), byte("*")

-- Deepest array nesting accepted; the peer's replies nest one level.
local MAX_DEPTH = 8

-- Opens (or takes from the worker's pool) a connection to host:port.
-- opts: connect_timeout, send_timeout, read_timeout (ms), pool_size and
-- backlog (see tcpsock:connect: at most pool_size connections of the
-- pool are open per worker; up to backlog more connect calls wait for
-- one to be released instead of opening their own).
function M.connect(host, port, opts)
    local sock, err = tcp()
    if not sock then
        return nil, err
    end
    sock:settimeouts(opts.connect_timeout, opts.send_timeout, opts.read_timeout)
    local ok
    ok, err = sock:connect(host, port, {
        pool_size = opts.pool_size,
        backlog = opts.backlog,
    })
    if not ok then
        return nil, err
    end
    return { sock = sock }
end

-- Returns the connection to the worker's pool (a connection that failed
-- is already closed: nothing to do).
function M.release(conn, idle_ms)
    if conn.dead then
        return
    end
    conn.dead = true
    local ok = conn.sock:setkeepalive(idle_ms or 60000)
    if not ok then
        conn.sock:close()
    end
end

function M.close(conn)
    if not conn.dead then
        conn.dead = true
        conn.sock:close()
    end
end

-- The command as a RESP array of bulk strings, as a table of pieces for
-- tcpsock:send (which writes a table of strings without joining it).
local function encode(n, args)
    local out = { "*", tostring(n), "\r\n" }
    local i = 4
    for a = 1, n do
        local s = args[a]
        if type(s) ~= "string" then
            s = tostring(s)
        end
        out[i] = "$"
        out[i + 1] = tostring(#s)
        out[i + 2] = "\r\n"
        out[i + 3] = s
        out[i + 4] = "\r\n"
        i = i + 5
    end
    return out
end

-- Reads one reply. Returns value, or nil, message, kind.
local function read_reply(sock, depth)
    local line, err = sock:receive("*l")
    if not line then
        return nil, err, "io"
    end
    local t = byte(line, 1)
    if t == COLON then
        local n = tonumber(sub(line, 2))
        if not n then
            return nil, "bad integer reply: " .. line, "io"
        end
        return n
    elseif t == DOLLAR then
        local len = tonumber(sub(line, 2))
        if not len or len < -1 then
            return nil, "bad bulk length: " .. line, "io"
        end
        if len == -1 then
            return null
        end
        local data
        data, err = sock:receive(len + 2)
        if not data then
            return nil, err, "io"
        end
        return sub(data, 1, len)
    elseif t == PLUS then
        return sub(line, 2)
    elseif t == MINUS then
        return nil, sub(line, 2), "redis"
    elseif t == STAR then
        local n = tonumber(sub(line, 2))
        if not n or n < -1 then
            return nil, "bad array length: " .. line, "io"
        end
        if n == -1 then
            return null
        end
        if depth >= MAX_DEPTH then
            return nil, "reply nested too deep", "io"
        end
        local arr = {}
        for i = 1, n do
            local v, e, kind = read_reply(sock, depth + 1)
            if v == nil then
                if kind ~= "redis" then
                    return nil, e, kind
                end
                -- An error inside an array (EXEC, some scripts): keep
                -- reading the rest so the connection stays in step.
                v = { err = e }
            end
            arr[i] = v
        end
        return arr
    end
    return nil, "unknown reply type: " .. line, "io"
end

-- Sends one command and reads its reply.
function M.call(conn, ...)
    if conn.dead then
        return nil, "closed", "io"
    end
    local n = select("#", ...)
    local sock = conn.sock
    local ok, err = sock:send(encode(n, { ... }))
    if not ok then
        M.close(conn)
        return nil, err, "io"
    end
    local value, kind
    value, err, kind = read_reply(sock, 0)
    if value == nil and kind == "io" then
        M.close(conn)
    end
    return value, err, kind
end

return M

-- The Lua sandbox's trusted bootstrap (loaded by mechaway/logic/lua.py, which explains
-- the design). Runs once per sandbox with the full standard library, captures what it
-- needs in locals, strips the runtime's globals and returns a setup function.
local type, next, select, rawget, rawset, rawlen, rawequal =
      type, next, select, rawget, rawset, rawlen, rawequal
local tostring, tonumber, error, setmetatable, getmetatable, pairs, ipairs, assert =
      tostring, tonumber, error, setmetatable, getmetatable, pairs, ipairs, assert
local raw_pcall, raw_xpcall, load, _VERSION = pcall, xpcall, load, _VERSION
local sethook, setupvalue, getinfo, dgetmetatable, getregistry =
      debug.sethook, debug.setupvalue, debug.getinfo, debug.getmetatable, debug.getregistry
local pack, unpack, concat = table.pack, table.unpack, table.concat
local insert, remove, sort, move = table.insert, table.remove, table.sort, table.move
local byte, sub, rep = string.byte, string.sub, string.rep
local find, match, gmatch, gsub = string.find, string.match, string.gmatch, string.gsub
local tointeger, mtype, huge, log = math.tointeger, math.type, math.huge, math.log
local create, resume, wrap, close =
      coroutine.create, coroutine.resume, coroutine.wrap, coroutine.close
local string_lib, table_lib, math_lib, utf8_lib, coroutine_lib =
      string, table, math, utf8, coroutine

for _, k in ipairs({"os", "io", "package", "require", "debug", "load", "loadstring",
                    "dofile", "loadfile", "collectgarbage", "python", "print", "warn",
                    "module", "setfenv", "getfenv", "newproxy"}) do
  _G[k] = nil
end

local function copy(t)
  local c = {}
  for k, v in next, t do c[k] = v end
  return c
end

return function(script, chunkname, budget, every, clock, max_memory, max_depth,
                max_tokens, chunk_size, STEPS_MAX)
  local chunk, cerr = load(script, "=" .. chunkname, "t", {})
  if not chunk then return false, cerr end

  -- Every Python object in this runtime shares lupa's metatable: a message holding one
  -- (a plugin's datetime, a function...) would let the script call it or str() it. Deny
  -- it all but lupa's own __gc; the clock is called through the saved C function, and
  -- lupa's overflow handler (which it calls through __call) stays callable.
  local py_mt = dgetmetatable(clock)
  local py_call, py_clock = py_mt.__call, clock
  local overflow = getregistry().LUPA_NUMBER_OVERFLOW_CALLBACK_FUNCTION
  clock = function() return py_call(py_clock) end
  local function py_denied() error("Python objects are not accessible from the Lua sandbox", 2) end
  py_mt.__index, py_mt.__newindex = py_denied, py_denied
  py_mt.__call = function(o, ...)
    if overflow ~= nil and rawequal(o, overflow) then return py_call(o, ...) end
    py_denied()
  end
  py_mt.__tostring = function() return "python object" end
  py_mt.__metatable = false
  local chunk_source = "=" .. chunkname

  ---------------------------------------------------------------- limits
  local used, deadline, spent, spent_line = 0, 0, false, nil
  local hook_ref
  local LIMIT = "sandbox limit exceeded"
  local NOMEM = "not enough memory"
  local BOOT = getinfo(1, "S").short_src .. ":"  -- errors positioned in this file

  local function user_line()
    for level = 2, 60 do
      local info = getinfo(level, "Sl")
      if info == nil then return nil end
      if info.source == chunk_source then return info.currentline end
    end
    return nil
  end

  local function user_error(msg)
    local line = user_line()
    if line then error(chunkname .. ":" .. line .. ": " .. msg, 0) end
    error(msg, 0)
  end

  -- A C function called from a wrapper below reports the wrapper's position: move the
  -- message to the user's line instead.
  local function fix_pos(e)
    if type(e) == "string" and sub(e, 1, #BOOT) == BOOT then
      local rest = match(e, "^%d+: (.*)$", #BOOT + 1)
      if rest then
        local line = user_line()
        e = line and (chunkname .. ":" .. line .. ": " .. rest) or rest
      end
    end
    return e
  end

  -- Once spent, the hook fires on every instruction of the thread, so that __close
  -- handlers run during the unwinding get one instruction each, not a full slice.
  local function exceed(kind)
    if not spent then spent, spent_line = kind, user_line() end
    sethook(hook_ref, "", 1)
    error(LIMIT, 0)
  end

  local run, abort
  local function hook()
    if spent then
      -- Let the runner reach the sethook() that clears this hook after its pcall.
      local info = getinfo(2, "f")
      if info and (info.func == run or info.func == abort) then return end
      error(LIMIT, 0)
    end
    used = used + every
    if used >= budget then exceed("budget") end
    if clock() > deadline then exceed("time") end
  end
  hook_ref = hook

  -- Charge work done inside one C call (which the count hook cannot see).
  local function charge(units)
    if units > 0 then
      used = used + units
      if used >= budget then exceed("budget") end
      if units >= 4096 and clock() > deadline then exceed("time") end
    end
  end

  local function check_time()
    if clock() > deadline then exceed("time") end
  end

  -- One C call that walks len bytes (upper, utf8.len, format...): 64 bytes an instruction,
  -- like string.rep, and a look at the clock, so that a loop of such calls on a string of
  -- megabytes cannot run a thousand of them (seconds) between two hooks.
  local function charge_bytes(len)
    if len > 65536 then
      used = used + len / 64
      if used >= budget then exceed("budget") end
      check_time()
    end
  end

  -- Once a limit is hit, nothing may swallow the error: re-raise after every catch.
  local function pass(ok, ...)
    if spent then error(LIMIT, 0) end
    if not ok then return ok, fix_pos((...)) end
    return ok, ...
  end
  local function s_pcall(f, ...) return pass(raw_pcall(f, ...)) end
  -- An error raised inside a hook leaves hooks disabled (L->allowhook) until a pcall
  -- boundary restores them; a message handler runs before that. So once a limit is hit
  -- the user's handler must not run at all.
  local function s_xpcall(f, handler, ...)
    if type(handler) ~= "function" then return pass(raw_xpcall(f, handler, ...)) end
    return pass(raw_xpcall(f, function(e)
      if spent then return e end
      return handler(e)
    end, ...))
  end

  -- Hooks are per coroutine: every coroutine installs the budget hook first thing. Its
  -- body runs under a pcall so that a coroutine killed by the hook dies with hooks
  -- enabled again (a dead coroutine's __close handlers run later, on close).
  local function co_finish(ok, ...)
    if ok then return ... end
    if spent then error(LIMIT, 0) end
    error((...), 0)
  end
  local function hooked(f)
    return function(...)
      sethook(hook, "", every)
      return co_finish(raw_pcall(f, ...))
    end
  end
  local function s_create(f)
    if type(f) ~= "function" then user_error("bad argument #1 to 'create' (function expected)") end
    return create(hooked(f))
  end
  local function s_wrap(f)
    if type(f) ~= "function" then user_error("bad argument #1 to 'wrap' (function expected)") end
    return wrap(hooked(f))
  end
  local function s_resume(co, ...) return pass(resume(co, ...)) end
  local function s_close(co) return pass(close(co)) end

  -- __gc would run outside any budget, whenever the collector likes.
  local function s_setmetatable(t, mt)
    if type(mt) == "table" and rawget(mt, "__gc") ~= nil then
      user_error("__gc metamethods are not allowed in the sandbox")
    end
    return setmetatable(t, mt)
  end

  ---------------------------------------------------------------- table
  local safe_table = copy(table_lib)

  local function check_len(t, fname)
    if type(t) == "table" then
      local mt = dgetmetatable(t)
      if mt ~= nil and rawget(mt, "__len") ~= nil then
        user_error("table." .. fname .. ": tables with a __len metamethod are not supported")
      end
    end
  end

  function safe_table.insert(t, ...)
    check_len(t, "insert")
    if type(t) == "table" and select("#", ...) >= 2 then
      local pos = tonumber((...))
      if pos then charge(rawlen(t) - pos) end
    end
    return insert(t, ...)
  end

  function safe_table.remove(t, pos)
    check_len(t, "remove")
    if type(t) == "table" and pos ~= nil then
      local p = tonumber(pos)
      if p then charge(rawlen(t) - p) end
    end
    return remove(t, pos)
  end

  function safe_table.sort(t, comp)
    check_len(t, "sort")
    if type(t) == "table" then
      local n = rawlen(t)
      if n > 1 then charge(n * log(n, 2)) end
    end
    return sort(t, comp)
  end

  local function span(t, i, j)
    local first = i == nil and 1 or tonumber(i)
    local last = j
    if last == nil then
      last = type(t) == "table" and rawlen(t) or nil
    else
      last = tonumber(last)
    end
    if first and last then charge(last - first + 1) end
  end

  function safe_table.concat(t, sep, i, j)
    if j == nil then check_len(t, "concat") end
    span(t, i, j)
    return concat(t, sep, i, j)
  end

  function safe_table.unpack(t, i, j)
    span(t, i, j)
    return unpack(t, i, j)
  end

  function safe_table.move(a1, f, e, t, a2)
    local first, last = tonumber(f), tonumber(e)
    if first and last then charge(last - first + 1) end
    return move(a1, f, e, t, a2)
  end

  ---------------------------------------------------------------- string
  local safe_string = copy(string_lib)
  safe_string.dump = nil

  -- Linear C functions, charged by the bytes they walk (the locals carry the library
  -- names: argument errors name the function they are raised in).
  local upper, lower, reverse = string_lib.upper, string_lib.lower, string_lib.reverse
  local format, spack, len, char = string_lib.format, string_lib.pack, utf8_lib.len, utf8_lib.char
  function safe_string.upper(s)
    if type(s) == "string" then charge_bytes(#s) end
    return upper(s)
  end
  function safe_string.lower(s)
    if type(s) == "string" then charge_bytes(#s) end
    return lower(s)
  end
  function safe_string.reverse(s)
    if type(s) == "string" then charge_bytes(#s) end
    return reverse(s)
  end
  function safe_string.sub(...)
    local r = sub(...)
    charge_bytes(#r)
    return r
  end
  function safe_string.format(...)
    local r = format(...)
    charge_bytes(#r)
    return r
  end
  function safe_string.pack(...)
    local pack = spack
    local r = pack(...)
    charge_bytes(#r)
    return r
  end
  local safe_utf8 = copy(utf8_lib)
  function safe_utf8.len(s, ...)
    if type(s) == "string" then charge_bytes(#s) end
    return len(s, ...)
  end
  function safe_utf8.char(...)
    local r = char(...)
    charge_bytes(#r)
    return r
  end

  function safe_string.rep(s, n, sep)
    local count = tonumber(n)
    local ts, tsep = type(s), type(sep)
    if count and count > 0 and (ts == "string" or ts == "number") then
      local piece = (ts == "string" and #s or 24) + (tsep == "string" and #sep or 0)
      local total = count * piece
      if total > max_memory then error(NOMEM, 0) end
      charge(count / 4 + total / 64)
    end
    return rep(s, n, sep)
  end

  -- Lua port of the 5.4 pattern matcher (lstrlib.c), used when the C matcher could
  -- run for long: here the count hook sees every step.
  local MAXCCALLS, CAP_UNF, CAP_POS = 200, -1, -2
  local PatErr = {}
  local function perr(msg) error(setmetatable({msg = msg}, PatErr), 0) end

  local CLASS
  local function classes()
    if CLASS then return CLASS end
    CLASS = {}
    local function set(...)
      local r, ranges = {}, {...}
      for i = 1, #ranges, 2 do
        for c = ranges[i], ranges[i + 1] do r[c] = true end
      end
      return r
    end
    local w = set(48, 57, 65, 90, 97, 122)
    local p = {}
    for c = 33, 126 do if not w[c] then p[c] = true end end
    local c = set(0, 31, 127, 127)
    local sets = {a = set(65, 90, 97, 122), c = c, d = set(48, 57), g = set(33, 126),
                  l = set(97, 122), p = p, s = set(9, 13, 32, 32), u = set(65, 90),
                  w = w, x = set(48, 57, 65, 70, 97, 102)}
    for letter, cs in next, sets do
      local code = byte(letter)
      CLASS[code] = cs
      local comp = {}
      for k = 0, 255 do if not cs[k] then comp[k] = true end end
      CLASS[code - 32] = comp
    end
    return CLASS
  end

  local function m_class(c, cl)
    local cs = CLASS[cl]
    if cs then return cs[c] == true end
    return cl == c
  end

  local function m_bracket(pat, c, p, ec)
    local sig = true
    if byte(pat, p + 1) == 94 then sig = false; p = p + 1 end
    while true do
      p = p + 1
      if p >= ec then return not sig end
      local pc = byte(pat, p)
      if pc == 37 then
        p = p + 1
        if m_class(c, byte(pat, p)) then return sig end
      elseif byte(pat, p + 1) == 45 and p + 2 < ec then
        p = p + 2
        if pc <= c and c <= byte(pat, p) then return sig end
      elseif pc == c then
        return sig
      end
    end
  end

  -- Index just past the single-char class starting at i, or nil plus the error.
  local function class_end(pat, i, plen)
    local c = byte(pat, i)
    i = i + 1
    if c == 37 then
      if i > plen then return nil, "malformed pattern (ends with '%')" end
      return i + 1
    elseif c == 91 then
      if byte(pat, i) == 94 then i = i + 1 end
      repeat
        if i > plen then return nil, "malformed pattern (missing ']')" end
        local cc = byte(pat, i)
        i = i + 1
        if cc == 37 and i <= plen then i = i + 1 end
      until byte(pat, i) == 93
      return i + 1
    end
    return i
  end

  local function m_class_end(ms, p)
    local ep, err = class_end(ms.pat, p, ms.plen)
    if not ep then perr(err) end
    return ep
  end

  local function m_single(ms, s, p, ep)
    if s > ms.slen then return false end
    local c = byte(ms.src, s)
    local pc = byte(ms.pat, p)
    if pc == 46 then return true
    elseif pc == 37 then return m_class(c, byte(ms.pat, p + 1))
    elseif pc == 91 then return m_bracket(ms.pat, c, p, ep - 1)
    end
    return pc == c
  end

  local do_match

  local function m_balance(ms, s, p)
    if p + 1 > ms.plen then perr("malformed pattern (missing arguments to '%b')") end
    local src, pat = ms.src, ms.pat
    local b, e = byte(pat, p), byte(pat, p + 1)
    if byte(src, s) ~= b then return nil end
    local cont, slen = 1, ms.slen
    s = s + 1
    while s <= slen do
      local c = byte(src, s)
      if c == e then
        cont = cont - 1
        if cont == 0 then return s + 1 end
      elseif c == b then
        cont = cont + 1
      end
      s = s + 1
    end
    return nil
  end

  local function m_backref(ms, s, d)
    local l = d - 48
    if l < 1 or l > ms.level or ms.clen[l] == CAP_UNF then
      perr("invalid capture index %" .. l)
    end
    local len = ms.clen[l]
    if len < 0 then return nil end
    if ms.slen - s + 1 >= len then
      charge(len / 64)
      local st = ms.cinit[l]
      if sub(ms.src, st, st + len - 1) == sub(ms.src, s, s + len - 1) then return s + len end
    end
    return nil
  end

  local function start_capture(ms, s, p, what)
    local level = ms.level + 1
    if level > 32 then perr("too many captures") end
    ms.cinit[level], ms.clen[level], ms.level = s, what, level
    local res = do_match(ms, s, p)
    if res == nil then ms.level = ms.level - 1 end
    return res
  end

  local function end_capture(ms, s, p)
    local l
    for i = ms.level, 1, -1 do
      if ms.clen[i] == CAP_UNF then l = i; break end
    end
    if not l then perr("invalid pattern capture") end
    ms.clen[l] = s - ms.cinit[l]
    local res = do_match(ms, s, p)
    if res == nil then ms.clen[l] = CAP_UNF end
    return res
  end

  local function max_expand(ms, s, p, ep)
    local i = 0
    while m_single(ms, s + i, p, ep) do i = i + 1 end
    while i >= 0 do
      local res = do_match(ms, s + i, ep + 1)
      if res then return res end
      i = i - 1
    end
    return nil
  end

  local function min_expand(ms, s, p, ep)
    while true do
      local res = do_match(ms, s, ep + 1)
      if res then return res end
      if m_single(ms, s, p, ep) then s = s + 1 else return nil end
    end
  end

  function do_match(ms, s, p)
    local depth = ms.depth - 1
    if depth == 0 then perr("pattern too complex") end
    ms.depth = depth
    local pat, plen = ms.pat, ms.plen
    while p <= plen do
      local pc = byte(pat, p)
      local nc = byte(pat, p + 1)
      if pc == 40 then                                   -- '('
        if nc == 41 then s = start_capture(ms, s, p + 2, CAP_POS)
        else s = start_capture(ms, s, p + 1, CAP_UNF) end
        break
      elseif pc == 41 then                               -- ')'
        s = end_capture(ms, s, p + 1)
        break
      elseif pc == 36 and p == plen then                 -- final '$'
        if s ~= ms.slen + 1 then s = nil end
        break
      elseif pc == 37 and nc == 98 then                  -- %bxy
        s = m_balance(ms, s, p + 2)
        if s == nil then break end
        p = p + 4
      elseif pc == 37 and nc == 102 then                 -- %f[set]
        p = p + 2
        if byte(pat, p) ~= 91 then perr("missing '[' after '%f' in pattern") end
        local ep = m_class_end(ms, p)
        local prev = s == 1 and 0 or byte(ms.src, s - 1)
        local cur = byte(ms.src, s) or 0
        if not m_bracket(pat, prev, p, ep - 1) and m_bracket(pat, cur, p, ep - 1) then
          p = ep
        else
          s = nil
          break
        end
      elseif pc == 37 and nc and nc >= 48 and nc <= 57 then  -- %0-%9
        s = m_backref(ms, s, nc)
        if s == nil then break end
        p = p + 2
      else
        local ep = m_class_end(ms, p)
        local epc = byte(pat, ep)
        if not m_single(ms, s, p, ep) then
          if epc == 42 or epc == 63 or epc == 45 then    -- '*' '?' '-': accept empty
            p = ep + 1
          else
            s = nil
            break
          end
        elseif epc == 63 then                            -- '?'
          local res = do_match(ms, s + 1, ep + 1)
          if res then s = res; break end
          p = ep + 1
        elseif epc == 43 then s = max_expand(ms, s + 1, p, ep); break   -- '+'
        elseif epc == 42 then s = max_expand(ms, s, p, ep); break       -- '*'
        elseif epc == 45 then s = min_expand(ms, s, p, ep); break       -- '-'
        else
          s = s + 1
          p = ep
        end
      end
    end
    ms.depth = ms.depth + 1
    return s
  end

  local function new_state(s, p)
    classes()
    return {src = s, slen = #s, pat = p, plen = #p, level = 0, depth = MAXCCALLS,
            cinit = {}, clen = {}}
  end

  local function get_capture(ms, i, s, e)
    if i > ms.level then
      if i ~= 1 then perr("invalid capture index %" .. i) end
      return sub(ms.src, s, e - 1)
    end
    local l = ms.clen[i]
    if l == CAP_UNF then perr("unfinished capture") end
    if l == CAP_POS then return ms.cinit[i] end
    local st = ms.cinit[i]
    return sub(ms.src, st, st + l - 1)
  end

  local function captures(ms, s, e)
    local levels = ms.level
    if levels == 0 then
      if s then return sub(ms.src, s, e - 1) end
      return
    end
    local caps = {}
    for i = 1, levels do caps[i] = get_capture(ms, i, s, e) end
    return unpack(caps, 1, levels)
  end

  local function posrelat(pos, len)
    if pos > 0 then return pos
    elseif pos == 0 then return 1
    elseif pos < -len then return 1
    end
    return len + pos + 1
  end

  local ESCAPE = "[%^%$%*%+%?%.%(%)%[%]%%%-]"

  local function l_find(s, p, init, plain, want_pos)
    local ls = #s
    init = posrelat(init, ls) - 1
    if init > ls then return nil end
    if plain then p = gsub(p, ESCAPE, "%%%0") end
    local anchor = byte(p, 1) == 94
    local pstart = anchor and 2 or 1
    local ms = new_state(s, p)
    local s1 = init + 1
    while true do
      ms.level, ms.depth = 0, MAXCCALLS
      local e = do_match(ms, s1, pstart)
      if e then
        if want_pos then return s1, e - 1, captures(ms, nil, nil) end
        return captures(ms, s1, e)
      end
      if anchor or s1 > ls then return nil end
      s1 = s1 + 1
    end
  end

  local function add_s(ms, s, e, news)
    local out, no, i = {}, 0, 1
    while true do
      local j = find(news, "%", i, true)
      if not j then break end
      no = no + 1
      out[no] = sub(news, i, j - 1)
      local c = byte(news, j + 1)
      no = no + 1
      if c == 37 then out[no] = "%"
      elseif c == 48 then out[no] = sub(ms.src, s, e - 1)
      elseif c and c >= 49 and c <= 57 then out[no] = tostring(get_capture(ms, c - 48, s, e))
      else perr("invalid use of '%' in replacement string") end
      i = j + 2
    end
    no = no + 1
    out[no] = sub(news, i)
    return concat(out, "", 1, no)
  end

  local function l_gsub(s, p, repl, max_s)
    local tr, ls = type(repl), #s
    if tr == "number" then repl = tostring(repl); tr = "string" end
    max_s = max_s or ls + 1
    local anchor = byte(p, 1) == 94
    local pstart = anchor and 2 or 1
    local ms = new_state(s, p)
    local buf, nb = {}, 0
    local src, keep, lastmatch, n, changed = 1, 1, nil, 0, false
    while n < max_s do
      ms.level, ms.depth = 0, MAXCCALLS
      local e = do_match(ms, src, pstart)
      if e and e ~= lastmatch then
        n = n + 1
        local v
        if tr == "string" then
          v = add_s(ms, src, e, repl)
        elseif tr == "function" then
          v = repl(captures(ms, src, e))
        else
          v = repl[get_capture(ms, 1, src, e)]
        end
        if v then
          local tv = type(v)
          if tv ~= "string" and tv ~= "number" then
            perr("invalid replacement value (a " .. tv .. ")")
          end
          nb = nb + 1; buf[nb] = sub(s, keep, src - 1)
          nb = nb + 1; buf[nb] = tostring(v)
          keep, changed = e, true
        end
        src, lastmatch = e, e
      elseif src <= ls then
        src = src + 1
      else
        break
      end
      if anchor then break end
    end
    if not changed then return s, n end
    nb = nb + 1; buf[nb] = sub(s, keep)
    return concat(buf, "", 1, nb), n
  end

  local function l_gmatch(s, p, init)
    local ls = #s
    init = posrelat(init, ls) - 1
    if init > ls then init = ls + 1 end
    local src, lastmatch = init + 1, nil
    local ms = new_state(s, p)
    return function()
      for st = src, ls + 1 do
        ms.level, ms.depth = 0, MAXCCALLS
        local e = do_match(ms, st, 1)
        if e and e ~= lastmatch then
          src, lastmatch = e, e
          return captures(ms, st, e)
        end
      end
      return nil
    end
  end

  -- Run a Lua-side pattern function; turn its pattern errors into user errors.
  local function fallback(f, ...)
    local r = pack(raw_pcall(f, ...))
    if spent then error(LIMIT, 0) end
    if r[1] then return unpack(r, 2, r.n) end
    local e = r[2]
    if dgetmetatable(e) == PatErr then user_error(e.msg) end
    error(e, 0)
  end

  -- Worst-case cost of a pattern call, in matcher steps.
  local STEPS_CHECK = 1e4     -- past this the wall clock is checked before the C call
  local crude, precise, ncache = {}, {}, 0

  -- Cheap upper bound: every quantifier, %b and back-reference may multiply by n.
  -- -1 means no special characters at all (a plain search).
  local function crude_exp(p)
    if ncache >= 512 then crude, precise, ncache = {}, {}, 0 end
    local k
    if not find(p, "[%^%$%*%+%?%.%(%[%%%-]") then
      k = -1
    else
      local _, q = gsub(p, "[%*%+%-%?]", "")
      local _, b = gsub(p, "%%[b0-9]", "")
      k = q + b
    end
    if #p <= 256 then  -- a long pattern cached would stay pinned between calls
      crude[p] = k
      ncache = ncache + 1
    end
    return k
  end

  local function item_set(p, i, ep)
    local c = byte(p, i)
    if c == 37 then
      local cl = byte(p, i + 1)
      if CLASS[cl] then return CLASS[cl] end
      return {[cl] = true}
    end
    local set = {}
    if c == 46 then
      for k = 0, 255 do set[k] = true end
    elseif c == 91 then
      for k = 0, 255 do if m_bracket(p, k, i, ep - 1) then set[k] = true end end
    else
      set[c] = true
    end
    return set
  end

  local function intersects(a, b)
    for k in next, a do if b[k] then return true end end
    return false
  end

  -- Tighter bound: a quantifier whose class cannot match what may follow it ("fenced")
  -- backtracks in O(1); only unfenced ones multiply. Returns {exponent, optionals} or
  -- false for a malformed pattern (the Lua matcher then reports it like C would).
  local function precise_exp(p)
    classes()
    local items, plen, i = {}, #p, 1
    while i <= plen do
      local c, nc = byte(p, i), byte(p, i + 1)
      if c == 40 or c == 41 or (c == 36 and i == plen) then
        i = i + 1
      elseif c == 37 and nc == 98 then
        if i + 3 > plen then return false end
        items[#items + 1] = {kind = "b", q = 0, set = {[byte(p, i + 2)] = true}}
        i = i + 4
      elseif c == 37 and nc == 102 then
        if byte(p, i + 2) ~= 91 then return false end
        local ep = class_end(p, i + 2, plen)
        if not ep then return false end
        items[#items + 1] = {kind = "f", q = 0}
        i = ep
      elseif c == 37 and nc and nc >= 48 and nc <= 57 then
        items[#items + 1] = {kind = "r", q = 0}
        i = i + 2
      else
        local ep = class_end(p, i, plen)
        if not ep then return false end
        local q = byte(p, ep)
        if q == 42 or q == 43 or q == 45 or q == 63 then
          items[#items + 1] = {kind = "c", q = q, set = item_set(p, i, ep)}
          i = ep + 1
        else
          items[#items + 1] = {kind = "c", q = 0, set = item_set(p, i, ep)}
          i = ep
        end
      end
    end
    local unfenced, fenced, optionals = 0, false, 0
    for idx = 1, #items do
      local it = items[idx]
      if it.kind == "b" or it.kind == "r" then
        fenced = true
      elseif it.kind == "c" and it.q ~= 0 then
        local overlap = false
        for j = idx + 1, #items do
          local nx = items[j]
          if nx.kind == "r" then overlap = true; break end
          if nx.kind ~= "f" then
            if intersects(it.set, nx.set) then overlap = true; break end
            if not (nx.kind == "c" and (nx.q == 42 or nx.q == 45 or nx.q == 63)) then break end
          end
        end
        if it.q == 63 then
          if overlap then optionals = optionals + 1 end
        elseif overlap then
          unfenced = unfenced + 1
        else
          fenced = true
        end
      end
    end
    return {unfenced + (fenced and 1 or 0), optionals}
  end

  -- Estimated steps for matching p over n bytes; u = 1 when every start is tried.
  -- find() runs a pattern without special characters as a memchr/memcmp search.
  local function cost(n, p, u, find)
    local k = crude[p] or crude_exp(p)
    local base, m = n + 1, #p + 1
    if k < 0 then
      if find then return base * m / 64 end
      k = 0
    end
    local est = base ^ (k + u) * m
    if est <= STEPS_MAX then return est end
    local pr = precise[p]
    if pr == nil then
      pr = precise_exp(p)
      if #p <= 256 then precise[p] = pr end
    end
    if not pr then return huge end
    return base ^ (pr[1] + u) * 2 ^ pr[2] * m
  end

  local function as_str(v)
    if type(v) == "number" then return tostring(v) end
    return v
  end

  local function int_arg(v, default)
    if v == nil then return default end
    return tointeger(tonumber(v))
  end

  function safe_string.find(s, p, init, plain)
    local ss, pp = as_str(s), as_str(p)
    if type(ss) == "string" and type(pp) == "string" then
      local est
      if plain then
        est = (#ss + 1) * (#pp + 1) / 64
      else
        est = cost(#ss, pp, byte(pp, 1) == 94 and 0 or 1, true)
      end
      if est > STEPS_MAX then
        local ii = int_arg(init, 1)
        if ii then
          return fallback(l_find, ss, pp, ii, plain or crude[pp] == -1, true)
        end
      elseif est > STEPS_CHECK then
        check_time()
      end
    end
    return find(s, p, init, plain)
  end

  function safe_string.match(s, p, init)
    local ss, pp = as_str(s), as_str(p)
    if type(ss) == "string" and type(pp) == "string" then
      local est = cost(#ss, pp, byte(pp, 1) == 94 and 0 or 1)
      if est > STEPS_MAX then
        local ii = int_arg(init, 1)
        if ii then return fallback(l_find, ss, pp, ii, false, false) end
      elseif est > STEPS_CHECK then
        check_time()
      end
    end
    return match(s, p, init)
  end

  function safe_string.gmatch(s, p, init)
    local ss, pp = as_str(s), as_str(p)
    if type(ss) == "string" and type(pp) == "string" then
      local est = cost(#ss, pp, 1)
      if est > STEPS_MAX then
        local ii = int_arg(init, 1)
        if ii then
          local step = l_gmatch(ss, pp, ii)
          return function() return fallback(step) end
        end
      elseif est > STEPS_CHECK then
        local it = gmatch(s, p, init)
        return function()
          check_time()
          return it()
        end
      end
    end
    return gmatch(s, p, init)
  end

  function safe_string.gsub(s, p, repl, n)
    local ss, pp = as_str(s), as_str(p)
    local tr = type(repl)
    if type(ss) == "string" and type(pp) == "string" and
       (tr == "string" or tr == "number" or tr == "function" or tr == "table") then
      local est = cost(#ss, pp, byte(pp, 1) == 94 and 0 or 1)
      if est > STEPS_MAX then
        local nn = int_arg(n, #ss + 1)
        if nn then return fallback(l_gsub, ss, pp, repl, nn) end
      elseif est > STEPS_CHECK then
        check_time()
      end
    end
    return gsub(s, p, repl, n)
  end

  -- Every string shares one metatable: route its methods to the sandbox's string table
  -- and hide it from getmetatable.
  local string_mt = getmetatable("")
  string_mt.__index = safe_string
  string_mt.__metatable = false

  ---------------------------------------------------------------- environment
  local base = {
    math = copy(math_lib), string = safe_string, table = safe_table, utf8 = safe_utf8,
    coroutine = {
      create = s_create, resume = s_resume, yield = coroutine_lib.yield,
      status = coroutine_lib.status, wrap = s_wrap, isyieldable = coroutine_lib.isyieldable,
      running = coroutine_lib.running, close = s_close,
    },
    pairs = pairs, ipairs = ipairs, next = next, select = select, type = type,
    tostring = tostring, tonumber = tonumber, error = error, assert = assert,
    pcall = s_pcall, xpcall = s_xpcall, setmetatable = s_setmetatable,
    getmetatable = getmetatable, rawequal = rawequal, rawlen = rawlen, rawget = rawget,
    rawset = rawset, _VERSION = _VERSION,
  }
  local env_mt = {__index = base, __metatable = false}
  local no_env = {}

  ---------------------------------------------------------------- results
  local state = {}
  local out, n = {}, 0
  -- Bytes of string in the result. One Lua string referenced a thousand times becomes a
  -- thousand Python strings: without this a 2 MB string in a 4096-leaf tree is 8 GB.
  local bytes = 0
  local TOO_BIG = "value holds more than " .. max_memory .. " bytes of strings"

  local function enc(v, depth)
    local tv = type(v)
    if tv ~= "table" then
      if tv == "string" then
        bytes = bytes + #v
        if bytes > max_memory then error(TOO_BIG, 0) end
      elseif tv ~= "number" and tv ~= "boolean" then
        error("cannot convert a " .. tv .. " value", 0)
      end
      n = n + 1
      out[n] = v
      return
    end
    if depth > max_depth then
      error("tables nested more than " .. max_depth .. " deep (a cycle?)", 0)
    end
    if n > max_tokens then error("value too large", 0) end
    local start = n
    out[n + 1] = nil
    n = n + 2
    local len = rawlen(v)
    if len > 0 then
      local cnt = 0
      for _ in next, v do cnt = cnt + 1 end
      if cnt == len then
        local list = true
        for i = 1, len do
          local x = rawget(v, i)
          local tx = type(x)
          if tx == "string" then
            bytes = bytes + #x
            if bytes > max_memory then error(TOO_BIG, 0) end
            n = n + 1
            out[n] = x
          elseif tx == "number" or tx == "boolean" then
            n = n + 1
            out[n] = x
          elseif x == nil then
            list = false
            break
          else
            enc(x, depth + 1)
          end
        end
        if list then
          out[start + 2] = len
          return
        end
        n = start + 2
      end
    end
    local cnt = 0
    for k, x in next, v do
      local tk = type(k)
      if tk == "number" then
        k = tostring(k)
      elseif tk ~= "string" then
        error("cannot convert a table key of type " .. tk, 0)
      end
      local tx = type(x)
      bytes = bytes + #k + (tx == "string" and #x or 0)
      if bytes > max_memory then error(TOO_BIG, 0) end
      if tx == "string" or tx == "number" or tx == "boolean" then
        out[n + 1], out[n + 2] = k, x
        n = n + 2
      else
        n = n + 1
        out[n] = k
        enc(x, depth + 1)
      end
      cnt = cnt + 1
    end
    out[start + 2] = -cnt
  end

  local function encode_result(r)
    if r == nil then
      out[1], out[2], n = false, 0, 2
      return
    end
    local tr = type(r)
    if tr ~= "table" then
      error("script must return a message table, a list of {port, message} pairs or nil, not a "
            .. tr, 0)
    end
    local len = rawlen(r)
    local first = len > 0 and rawget(r, 1)
    if type(first) == "table" and type(rawget(first, 1)) == "string" then
      out[1], n = len, 1
      for i = 1, len do
        local pair = rawget(r, i)
        local port = type(pair) == "table" and rawget(pair, 1)
        local msg = port and rawget(pair, 2)
        if type(port) ~= "string" or type(msg) ~= "table" then
          error("return value item " .. i .. " is not a {port, message} pair", 0)
        end
        n = n + 1
        out[n] = port
        bytes = bytes + #port
        enc(msg, 1)
      end
      n = n + 1
      out[n] = 2
      return
    end
    if len == 0 then
      -- a message of scalars (the common case): key, value, ... then status 5
      n = 0
      for k, x in next, r do
        local tx = type(x)
        if tx == "string" then
          bytes = bytes + #x
        elseif tx ~= "number" and tx ~= "boolean" then
          n = -1
          break
        end
        local tk = type(k)
        if tk == "number" then
          k = tostring(k)
        elseif tk ~= "string" then
          error("cannot convert a table key of type " .. tk, 0)
        end
        out[n + 1], out[n + 2] = k, x
        n = n + 2
      end
      if n > 0 and bytes <= max_memory then
        n = n + 1
        out[n] = 5
        return
      end
    end
    n, bytes = 0, 0
    enc(r, 1)
    n = n + 1
    out[n] = 1
  end

  local function body(m)
    local env = setmetatable({msg = m, data = m.payload, state = state}, env_mt)
    env._G = env
    setupvalue(chunk, 1, env)
    local r = chunk()
    local st = rawget(env, "state")
    if st ~= state and type(st) == "table" then state = st end
    encode_result(r)
  end

  -- An error message is cut (on a UTF-8 boundary) to this many bytes.
  local MAX_ERROR = 2000

  local function finish(ok, err)
    if spent then return spent, spent_line, 4 end
    if ok then
      if n <= chunk_size then
        if bytes < 65536 then return unpack(out, 1, n) end
        -- Let go of big strings now, or they stay pinned (and counted against the cap)
        -- until a later result happens to overwrite them.
        local o = out
        out = {}
        return unpack(o, 1, n)
      end
      return n, -1
    end
    if err == NOMEM then return "memory", nil, 4 end
    local te = type(err)
    if te == "string" then
      if #err > MAX_ERROR then
        local cut = MAX_ERROR
        while cut > 1 and (byte(err, cut + 1) or 0) & 0xC0 == 0x80 do cut = cut - 1 end
        err = sub(err, 1, cut) .. "..."
      end
      return err, 3
    end
    if te == "number" then return tostring(err), 3 end
    return "error object is a " .. te .. " value", 3
  end

  function run(m, dl)
    used, deadline, spent, spent_line, bytes = 0, dl, false, nil, 0
    if n > chunk_size then out = {} end
    sethook(hook, "", every)
    local ok, err = raw_xpcall(body, fix_pos, m)
    sethook()
    setupvalue(chunk, 1, no_env)  -- nothing of this message (or of the state) stays reachable
    return finish(ok, err)
  end

  local function fetch(i, j)
    if j < n then return unpack(out, i, j) end
    local o = out  -- the last piece: nothing of the result stays pinned
    out = {}
    return unpack(o, i, j)
  end

  local function get_state()
    spent, bytes = false, 0
    if n > chunk_size then out = {} end
    n = 0
    local ok, err = raw_pcall(enc, state, 1)
    if ok then
      n = n + 1
      out[n] = 1
    end
    return finish(ok, err)
  end

  local function set_state(t)
    state = t
  end

  function abort()
    sethook()
    return spent, spent_line
  end

  return true, run, fetch, get_state, set_state, abort
end

-- Newer-timestamp-wins merge of family values, atomically on the server.
-- KEYS[i]: one (row, family) key. ARGV[2i-1]: TTL in ms (0: none). ARGV[2i]: the new cells.
--
-- A family value (version 4, see redis.py) is, big-endian:
--   u8 4 | u8 flags | u16 n | f64 base_ts | u16 m | m x (u16 index, f64 ts)
--   | n column ids (u8, or u16 if flags bit 0) | n value sizes (u8, u16 or u32: flags bits 1-2)
--   | a msgpack array header and the n msgpack values
-- A cell's ts is base_ts unless one of the m (index, ts) pairs names it. The sizes let this
-- script splice values as raw bytes without decoding them, so they come back exactly as
-- written. Version 3 values (msgpack headers, tastemaker < 0.4) are read and rewritten as 4.
-- For each column the cell with the newer ts is kept (equal: the new one); the family's TTL
-- restarts at every write. A key that does not exist yet is set as sent, and so is a value
-- whose columns are the stored ones, each newer or equal (a family rewritten whole).

local CHUNK = 4000  -- values unpacked onto the Lua stack at a time (its limit is ~8000)
local WIDTH = {1, 2, 4}
local FMT = {[1] = 'B', [2] = 'H', [4] = 'I4'}

local function read_uints(s, pos, n, w)
  if w == 1 and n <= CHUNK then return {string.byte(s, pos, pos + n - 1)}, pos + n end
  local out = {}
  local k = 0
  while k < n do
    local c = math.min(CHUNK, n - k)
    local got = {struct.unpack('>' .. string.rep(FMT[w], c), s, pos)}
    for i = 1, c do out[k + i] = got[i] end
    pos = got[c + 1]
    k = k + c
  end
  return out, pos
end

local function pack_uints(t, w)
  local n = #t
  if w == 1 and n <= CHUNK then return string.char(unpack(t)) end
  local parts = {}
  for k = 1, n, CHUNK do
    local c = math.min(CHUNK, n - k + 1)
    parts[#parts + 1] = struct.pack('>' .. string.rep(FMT[w], c), unpack(t, k, k + c - 1))
  end
  return table.concat(parts)
end

local function skip_array_header(s, pos)
  local b = string.byte(s, pos)
  if b >= 0x90 and b <= 0x9f then return pos + 1 end
  if b == 0xdc then return pos + 3 end
  return pos + 5
end

-- The m (index, ts) pairs of a version 4 value from byte 15 on, read a chunk per
-- struct.unpack: the cells with their own ts, by index (1-based), and where they end.
local function read_own(s, m)
  local own, k, pos = {}, 0, 15
  while k < m do
    local c = math.min(CHUNK / 2, m - k)
    local got = {struct.unpack('>' .. string.rep('Hd', c), s, pos)}
    for q = 1, 2 * c, 2 do own[got[q] + 1] = got[q + 1] end
    pos = got[2 * c + 1]
    k = k + c
  end
  return own, pos
end

-- A parsed family: ids and sizes (arrays), base ts and the cells with their own ts (by
-- index), and where in `s` the values start. Values stay in `s` until written out.
local function parse4(s)
  local _, flags, n, base, m = struct.unpack('>BBHdH', s)
  local own, pos = read_own(s, m)
  local ids, lens
  ids, pos = read_uints(s, pos, n, (flags % 2 == 1) and 2 or 1)
  lens, pos = read_uints(s, pos, n, WIDTH[math.floor(flags / 2) % 4 + 1])
  return {s = s, n = n, base = base, own = own, ids = ids, lens = lens,
          vpos = skip_array_header(s, pos)}
end

local function parse3(s)
  local off, header = cmsgpack.unpack_one(s, 2)
  local base, ids, exc, lens = header[1], header[2], header[3], header[4]
  local by_id = {}
  for i = 1, #exc, 2 do by_id[exc[i]] = exc[i + 1] end
  local own = {}
  for i = 1, #ids do own[i] = by_id[ids[i]] end
  return {s = s, n = #ids, base = base, own = own, ids = ids, lens = lens,
          vpos = skip_array_header(s, off + 1)}
end

local function parse(s)
  local v = string.byte(s, 1)
  if v == 4 then return parse4(s) end
  if v == 3 then return parse3(s) end
  return nil  -- not a family value we know: the new value replaces it
end

local function array_header(n)
  if n < 16 then return string.char(0x90 + n) end
  if n < 65536 then return '\220' .. struct.pack('>H', n) end
  return '\221' .. struct.pack('>I4', n)
end

-- Whether `new` replaces `old` whole: the same columns in the same order, each cell newer
-- or equal. Found from the headers and the timestamps alone, without the values: a family
-- rewritten whole (all cells at one newer time), or sent whole by a writer that read it
-- (the stream: changed cells at the batch's time, the others with their stored time).
local function replaces(old, new)
  if string.byte(old, 1) ~= 4 then return false end
  local _, of, on, ob, om = struct.unpack('>BBHdH', old)
  local _, nf, nn, nb, nm = struct.unpack('>BBHdH', new)
  if on ~= nn or of % 2 ~= nf % 2 then return false end
  local w = (nf % 2 == 1) and 2 or 1
  local o_from, n_from = 15 + 10 * om, 15 + 10 * nm
  if string.sub(old, o_from, o_from + nn * w - 1) ~= string.sub(new, n_from, n_from + nn * w - 1) then
    return false
  end
  if om == 0 and nm == 0 then return nb >= ob end
  local oown, nown = read_own(old, om), read_own(new, nm)
  for i = 1, nn do
    if (nown[i] or nb) < (oown[i] or ob) then return false end
  end
  return true
end

local function merge(old, new)
  if replaces(old, new) then return new end
  local o = parse(old)
  if o == nil then return new end
  local c = parse4(new)
  -- Which stored cell each new one replaces (newer or equal ts), and which are new columns.
  local at = {}
  for i = 1, o.n do at[o.ids[i]] = i end
  local over, extra = {}, {}
  local obase, oown, cbase, cown = o.base, o.own, c.base, c.own
  for i = 1, c.n do
    local j = at[c.ids[i]]
    if j == nil then
      extra[#extra + 1] = i
    elseif (cown[i] or cbase) >= (oown[j] or obase) then
      over[j] = i
    end
  end
  -- The merged family: the stored cells in their order, then the new columns. Values are
  -- copied as runs of adjacent bytes of one source (most cells of a stored family are kept).
  local coffs, pos = {}, c.vpos
  for i = 1, c.n do
    coffs[i] = pos
    pos = pos + c.lens[i]
  end
  local ids, lens, ts, parts = o.ids, {}, {}, {}
  local olens, clens = o.lens, c.lens
  local base, max_len = -math.huge, 0
  local run_from, run_to = o.vpos, o.vpos
  pos = o.vpos
  local n = o.n
  for j = 1, n do
    local i, len, t = over[j], nil, nil
    if i then
      len, t = clens[i], cown[i] or cbase
      parts[#parts + 1] = string.sub(old, run_from, run_to - 1)
      parts[#parts + 1] = string.sub(new, coffs[i], coffs[i] + len - 1)
      pos = pos + olens[j]
      run_from, run_to = pos, pos
    else
      len, t = olens[j], oown[j] or obase
      pos = pos + len
      run_to = pos
    end
    lens[j], ts[j] = len, t
    if t > base then base = t end
    if len > max_len then max_len = len end
  end
  parts[#parts + 1] = string.sub(old, run_from, run_to - 1)
  for _, i in ipairs(extra) do
    n = n + 1
    local len, t = clens[i], cown[i] or cbase
    ids[n], lens[n], ts[n] = c.ids[i], len, t
    parts[#parts + 1] = string.sub(new, coffs[i], coffs[i] + len - 1)
    if t > base then base = t end
    if len > max_len then max_len = len end
  end
  local max_id = 0
  for k = 1, n do
    if ids[k] > max_id then max_id = ids[k] end
  end
  local own, m = {}, 0
  for k = 1, n do
    if ts[k] ~= base then
      own[2 * m + 1], own[2 * m + 2] = k - 1, ts[k]
      m = m + 1
    end
  end
  local iw = max_id > 255 and 2 or 1
  local lw = max_len > 65535 and 4 or (max_len > 255 and 2 or 1)
  local flags = (iw == 2 and 1 or 0) + (lw == 4 and 4 or (lw == 2 and 2 or 0))
  local own_bytes = ''
  for k = 0, m - 1, CHUNK / 2 do
    local c = math.min(CHUNK / 2, m - k)
    own_bytes = own_bytes .. struct.pack('>' .. string.rep('Hd', c), unpack(own, 2 * k + 1, 2 * (k + c)))
  end
  return struct.pack('>BBHdH', 4, flags, n, base, m) .. own_bytes
    .. pack_uints(ids, iw) .. pack_uints(lens, lw) .. array_header(n) .. table.concat(parts)
end

for i, key in ipairs(KEYS) do
  local ttl = ARGV[2 * i - 1]
  local value = ARGV[2 * i]
  -- A new key is set in one call; an existing one is read, merged and written.
  local done
  if ttl ~= '0' then
    done = redis.call('SET', key, value, 'NX', 'PX', ttl)
  else
    done = redis.call('SET', key, value, 'NX')
  end
  if not done then
    value = merge(redis.call('GET', key), value)
    if ttl ~= '0' then
      redis.call('SET', key, value, 'PX', ttl)
    else
      redis.call('SET', key, value)
    end
  end
end
return #KEYS

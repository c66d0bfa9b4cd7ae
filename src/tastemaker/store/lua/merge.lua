-- Newer-timestamp-wins merge of family values, atomically on the server.
-- KEYS[i]: one (row, family) key. ARGV[2i-1]: TTL in ms (0: none). ARGV[2i]: the new cells.
--
-- A family value is the byte 3 and a msgpack array of two: the header
-- [base_ts, ids, own_ts, lengths] and the array of the values: value i is column ids[i], lengths[i] bytes long, and its ts is
-- base_ts unless own_ts (id, ts, id, ts, ...) lists one. The lengths let this script splice
-- values as raw bytes without decoding them, so they come back exactly as written.
-- For each column the cell with the newer ts is kept (equal: the new one); the family's TTL
-- restarts at every write. A key that does not exist yet is set as sent.

local function parse(s, cells)
  if string.byte(s, 1) ~= 3 then return end
  local off, header = cmsgpack.unpack_one(s, 2)
  local base, ids, exc, lens = header[1], header[2], header[3], header[4]
  local b = string.byte(s, off + 1)
  if b >= 0x90 and b <= 0x9f then off = off + 1
  elseif b == 0xdc then off = off + 3
  else off = off + 5 end
  local own = {}
  for i = 1, #exc, 2 do own[exc[i]] = exc[i + 1] end
  for i = 1, #ids do
    local id, len = ids[i], lens[i]
    cells[id] = {own[id] or base, string.sub(s, off + 1, off + len), len}
    off = off + len
  end
end

local function array_header(n)
  if n < 16 then return string.char(0x90 + n) end
  if n < 65536 then return '\220' .. struct.pack('>H', n) end
  return '\221' .. struct.pack('>I', n)
end

local function serialize(cells)
  local base = nil
  for _, c in pairs(cells) do
    if base == nil or c[1] > base then base = c[1] end
  end
  local ids, exc, lens, vals = {}, {}, {}, {}
  for id, c in pairs(cells) do
    local n = #ids + 1
    ids[n], vals[n], lens[n] = id, c[2], c[3]
    if c[1] ~= base then
      exc[#exc + 1] = id
      exc[#exc + 1] = c[1]
    end
  end
  return '\3\146' .. cmsgpack.pack({base, ids, exc, lens}) .. array_header(#vals)
    .. table.concat(vals)
end

for i, key in ipairs(KEYS) do
  local ttl = tonumber(ARGV[2 * i - 1])
  local value = ARGV[2 * i]
  local old = redis.call('GET', key)
  if old then
    local cells = {}
    parse(old, cells)
    local incoming = {}
    parse(value, incoming)
    for id, cell in pairs(incoming) do
      local kept = cells[id]
      if kept == nil or cell[1] >= kept[1] then cells[id] = cell end
    end
    value = serialize(cells)
  end
  if ttl > 0 then
    redis.call('SET', key, value, 'PX', ttl)
  else
    redis.call('SET', key, value)
  end
end
return #KEYS

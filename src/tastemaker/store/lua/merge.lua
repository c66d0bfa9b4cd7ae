-- Newer-timestamp-wins merge of family values, atomically on the server.
-- KEYS[i]: one (row, family) key. ARGV[2i-1]: TTL in ms (0: none). ARGV[2i]: the new cells,
-- encoded as in store/redis.py (_encode_family). For each column the cell with the newer
-- timestamp is kept (equal: the new one); the family's TTL restarts at every write.
local function parse(s, cells)
  if string.byte(s, 1) ~= 1 then return end
  local base = struct.unpack('>d', s, 2)
  local pos, n = 10, #s
  while pos <= n do
    local id = string.byte(s, pos)
    pos = pos + 1
    if id == 255 then id = struct.unpack('>H', s, pos); pos = pos + 2 end
    local ts = base
    if string.byte(s, pos) == 1 then ts = struct.unpack('>d', s, pos + 1); pos = pos + 8 end
    pos = pos + 1
    local len = string.byte(s, pos)
    pos = pos + 1
    if len == 255 then len = struct.unpack('>I', s, pos); pos = pos + 4 end
    cells[id] = {ts, string.sub(s, pos, pos + len - 1)}
    pos = pos + len
  end
end

local function serialize(cells)
  local ids, base = {}, nil
  for id, cell in pairs(cells) do
    ids[#ids + 1] = id
    if base == nil or cell[1] > base then base = cell[1] end
  end
  table.sort(ids)
  local out = {string.char(1), struct.pack('>d', base)}
  for _, id in ipairs(ids) do
    local ts, value = cells[id][1], cells[id][2]
    if id < 255 then out[#out + 1] = string.char(id)
    else out[#out + 1] = string.char(255) .. struct.pack('>H', id) end
    if ts == base then out[#out + 1] = string.char(0)
    else out[#out + 1] = string.char(1) .. struct.pack('>d', ts) end
    if #value < 255 then out[#out + 1] = string.char(#value)
    else out[#out + 1] = string.char(255) .. struct.pack('>I', #value) end
    out[#out + 1] = value
  end
  return table.concat(out)
end

for i, key in ipairs(KEYS) do
  local ttl = tonumber(ARGV[2 * i - 1])
  local new = ARGV[2 * i]
  local old = redis.call('GET', key)
  local value = new
  if old then
    local cells = {}
    parse(old, cells)
    local incoming = {}
    parse(new, incoming)
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

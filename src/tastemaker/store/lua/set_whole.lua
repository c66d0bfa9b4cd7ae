-- Families sent whole by their only writer (`Mutation.whole`: the stream processor's user
-- rows, every live cell as it read them with its changes over them): set as sent, their TTL
-- restarted, without reading the stored value. Merging would give the same value: what
-- merge.lua finds by reading and comparing both headers, which this script skips.
-- KEYS[i]: one (row, family) key. ARGV[2i-1]: TTL in ms (0: none). ARGV[2i]: the value.
for i, key in ipairs(KEYS) do
  local ttl = ARGV[2 * i - 1]
  if ttl ~= '0' then
    redis.call('SET', key, ARGV[2 * i], 'PX', ttl)
  else
    redis.call('SET', key, ARGV[2 * i])
  end
end
return #KEYS

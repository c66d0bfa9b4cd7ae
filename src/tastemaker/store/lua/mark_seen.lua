-- Record idempotency keys (event ids a batch applied), each with the same TTL.
-- KEYS: the keys. ARGV[1]: TTL in ms. One script call per chunk of keys costs the client one
-- command to build instead of one per key (a stream batch records one key per event).
for _, key in ipairs(KEYS) do
  redis.call('SET', key, '1', 'PX', ARGV[1])
end
return #KEYS

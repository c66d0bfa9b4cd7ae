-- The small integer id of a family or column name, assigned once for the whole deployment.
-- KEYS[1]: the schema hash. ARGV[1]: "f:<family>" or "c:<column>".
local id = redis.call('HGET', KEYS[1], ARGV[1])
if id then return tonumber(id) end
id = redis.call('HINCRBY', KEYS[1], '#next', 1)
redis.call('HSET', KEYS[1], ARGV[1], id)
return id

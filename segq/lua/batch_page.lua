-- A page of batch ARGV[1]'s items (ARGV[3] from ARGV[2]: video job ids and 's<N>' for shard N)
-- with the states of the shards among them, in one step (the manifest, and everything else that
-- walks a batch). Returns {items, their states: a shard's state, '' for a video job or a shard
-- without one}.
local items = redis.call('LRANGE', batch_jobs_key(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[2]) + tonumber(ARGV[3]) - 1)
local shards, states = {}, {}
for i, item in ipairs(items) do
  if string.sub(item, 1, 1) == 's' then table.insert(shards, string.sub(item, 2)) end
  states[i] = ''
end
if #shards > 0 then
  local found, j = redis.call('HMGET', shards_key(ARGV[1]), unpack(shards)), 1
  for i, item in ipairs(items) do
    if string.sub(item, 1, 1) == 's' then
      states[i] = found[j] or ''
      j = j + 1
    end
  end
end
return {items, states}

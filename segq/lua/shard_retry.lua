-- Run again the images at positions ARGV[4] (a JSON array) of shard ARGV[2] of batch ARGV[1],
-- ARGV[5] of them failed and ARGV[6] canceled as last run, as a new shard ARGV[3] (its list of
-- images already written to S3). The first shard records the new one and the positions it
-- runs, so that an image's latest run is found from its id (segq.shards). Refused while the
-- shard, or an earlier retry of it, has not ended (a retry running already). The batch opens
-- again and is no longer canceled; the shard message template (ARGV[8]) is written if it is
-- missing. ARGV: batch, shard, new shard, positions, failed, canceled, now, template.
-- Returns 1, or 0 when refused.
local batch, k, k2, now = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[7])
local st = shard_get(batch, k)
if not st or st.s ~= 'e' then return 0 end
for _, r in ipairs(st.r or {}) do
  local rs = shard_get(batch, tostring(r[1]))
  if rs and rs.s ~= 'e' then return 0 end
end
local positions = cjson.decode(ARGV[4])
local n = #positions
if n == 0 or redis.call('HEXISTS', shards_key(batch), k2) == 1 then return 0 end
st.r = st.r or {}
table.insert(st.r, {tonumber(k2), positions})
shard_put(batch, k, st)
shard_put(batch, k2, {s = 'q', n = n, t = now, of = tonumber(k)})
local bkey = batch_key(batch)
incr(bkey, 'failed', -tonumber(ARGV[5]))
incr(bkey, 'canceled', -tonumber(ARGV[6]))
incr(bkey, 'queued', n)
reopen_batch(batch)
local meta = redis.call('HMGET', bkey, 'model', 'task', 'priority')
redis.call('SET', template_key(meta[1], meta[2], meta[3]), ARGV[8], 'NX')
enqueue_shard(batch, tonumber(k2))
return 1

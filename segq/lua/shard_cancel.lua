-- Cancel the image at position ARGV[3] (of its first shard) in shard ARGV[2] of batch ARGV[1].
-- Queued: the image is canceled now (counted now; the shard skips it), and a shard with every
-- image canceled ends. Running: the shard skips it if it has not begun it yet (it looks every
-- second) and counts it canceled when it ends. ARGV: batch, shard, position, now, ttl.
-- Returns 1 (canceled), 2 (asked of the running shard), 3 (canceled already), 0 (the shard
-- ended: too late), -1 (no such shard).
local batch, k, pos = ARGV[1], ARGV[2], tonumber(ARGV[3])
local st = shard_get(batch, k)
if not st then return -1 end
if st.s == 'e' then return 0 end
st.x = st.x or {}
for _, p in ipairs(st.x) do
  if p == pos then return 3 end
end
table.insert(st.x, pos)
if st.s == 'r' then
  shard_put(batch, k, st)
  return 2
end
local bkey = batch_key(batch)
st.xq = num(st.xq) + 1
incr(bkey, 'queued', -1)
count_images(batch, redis.call('HGET', bkey, 'model') or 'unknown', 0, 0, 1)
if st.xq >= st.n then
  st.s, st.e, st.d, st.f, st.c, st.t1 = 'e', 0, 0, 0, st.n, tonumber(ARGV[4])
end
shard_put(batch, k, st)
maybe_finish_batch(batch, ARGV[4], tonumber(ARGV[5]))
return 1

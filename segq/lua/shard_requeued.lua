-- A task of shard ARGV[2] of batch ARGV[1] was put back on its queue (its worker died, or its
-- message was lost): the shard counts it and keeps the note ARGV[3]. Returns the count, or 0 when
-- there is no such shard.
local st = shard_get(ARGV[1], ARGV[2])
if not st then return 0 end
st.rq = num(st.rq) + 1
st.nt = ARGV[3]
shard_put(ARGV[1], ARGV[2], st)
return st.rq

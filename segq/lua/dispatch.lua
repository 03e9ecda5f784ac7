-- Release pending work of model ARGV[1] until its queue holds ARGV[2] messages (lib's dispatch).
-- ARGV: model, target, now. Returns how many messages it moved.
return dispatch(ARGV[1], tonumber(ARGV[2]), ARGV[3])

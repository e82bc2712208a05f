-- ARGV: lease members. Returns the 1-based positions of members whose lease
-- was lost (expired and taken back, settled, or purged).
return ack_members(ARGV)

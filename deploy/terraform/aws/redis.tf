############################ ElastiCache Redis (routing directory) ############################
# drone:{agent_id} -> {"relay_id", "session_id"} with a 45 s TTL. Ephemeral by nature: every live
# relay rewrites its keys every TTL/2, so no snapshots are needed.

resource "aws_elasticache_subnet_group" "redis" {
  name       = "${local.name}-redis"
  subnet_ids = aws_subnet.private[*].id
}

resource "aws_elasticache_replication_group" "redis" {
  replication_group_id = "${local.name}-redis"
  description          = "Contrail routing directory (drone:{id} -> relay)"

  engine               = "redis"
  engine_version       = var.redis_engine_version
  node_type            = var.redis_node_type
  port                 = 6379
  parameter_group_name = "default.redis7"

  num_cache_clusters         = var.redis_num_cache_clusters
  automatic_failover_enabled = var.redis_num_cache_clusters > 1
  multi_az_enabled           = var.redis_num_cache_clusters > 1

  subnet_group_name  = aws_elasticache_subnet_group.redis.name
  security_group_ids = [aws_security_group.redis.id]

  # Secure defaults: TLS in transit with an AUTH token, encryption at rest.
  transit_encryption_enabled = true
  auth_token                 = random_password.redis_auth.result
  auth_token_update_strategy = "ROTATE"
  at_rest_encryption_enabled = true
  kms_key_id                 = var.redis_kms_key_arn

  snapshot_retention_limit   = 0
  auto_minor_version_upgrade = true
  apply_immediately          = false
  maintenance_window         = "sun:03:00-sun:04:00"
}

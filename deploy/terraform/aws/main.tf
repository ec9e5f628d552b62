data "aws_availability_zones" "available" {
  state = "available"
}

data "aws_caller_identity" "current" {}

locals {
  name = "${var.name}-${var.environment}"
  azs  = slice(data.aws_availability_zones.available.names, 0, var.az_count)

  # Metric namespace and the static dimension the ADOT sidecar adds to every relay metric.
  metrics_namespace = "Contrail"
  service_dimension = "${local.name}-relay"

  redis_addr = "rediss://${aws_elasticache_replication_group.redis.primary_endpoint_address}:${aws_elasticache_replication_group.redis.port}"

  relay_toml = templatefile("${path.module}/templates/relay.toml.tftpl", {
    max_sessions      = var.relay_max_sessions
    drain_deadline_ms = var.drain_deadline_ms
    redis_addr        = local.redis_addr
    auth_mode         = var.auth_mode
    nats_url          = var.nats_url
    nats_subject      = var.nats_subject
  })

  adot_config = templatefile("${path.module}/templates/adot-config.yaml.tftpl", {
    region            = var.aws_region
    namespace         = local.metrics_namespace
    log_group         = aws_cloudwatch_log_group.metrics.name
    service_dimension = local.service_dimension
    # As the relay prints the bucket's le label (0.5, 1, 2.5, ...).
    ack_threshold_le = tostring(var.ack_latency_p99_threshold_seconds)
  })
}

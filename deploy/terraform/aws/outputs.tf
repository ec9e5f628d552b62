output "quic_endpoint" {
  description = "Agents connect here (QUIC, UDP). Point a DNS name at it; the TLS certificate must match that name."
  value       = "${aws_lb.quic.dns_name}:4433"
}

output "quic_nlb_zone_id" {
  description = "Hosted zone id of the public NLB, for a Route 53 alias record."
  value       = aws_lb.quic.zone_id
}

output "admin_endpoint" {
  description = "Internal admin/metrics API (TCP 2112), reachable from the VPC and admin_ingress_cidrs. Each request lands on one relay."
  value       = "http://${aws_lb.admin.dns_name}:2112"
}

output "ecs_cluster_name" {
  description = "ECS cluster running the relays."
  value       = aws_ecs_cluster.main.name
}

output "ecs_service_name" {
  description = "ECS service of the relays (force a rolling restart with aws ecs update-service --force-new-deployment)."
  value       = aws_ecs_service.relay.name
}

output "ecr_repository_url" {
  description = "ECR repository to push the relay image to (null when create_ecr_repository = false)."
  value       = var.create_ecr_repository ? aws_ecr_repository.relay[0].repository_url : null
}

output "redis_primary_endpoint" {
  description = "ElastiCache primary endpoint (TLS, AUTH). The relays use it as REDIS addr rediss://host:6379."
  value       = aws_elasticache_replication_group.redis.primary_endpoint_address
}

output "secret_arns" {
  description = "Secrets Manager ARNs. Put values into tls_cert, tls_key and agent_tokens before the first task starts unless you passed them as variables."
  value = {
    admin_token  = aws_secretsmanager_secret.admin_token.arn
    redis_auth   = aws_secretsmanager_secret.redis_auth.arn
    jwt_key      = aws_secretsmanager_secret.jwt_key.arn
    agent_tokens = aws_secretsmanager_secret.agent_tokens.arn
    tls_cert     = aws_secretsmanager_secret.tls_cert.arn
    tls_key      = aws_secretsmanager_secret.tls_key.arn
  }
}

output "relay_log_group" {
  description = "CloudWatch log group of the relay, config-init and ADOT containers."
  value       = aws_cloudwatch_log_group.relay.name
}

output "metrics_namespace" {
  description = "CloudWatch metrics namespace of the relay metrics (dimension Service = metrics_service_dimension)."
  value       = local.metrics_namespace
}

output "metrics_service_dimension" {
  description = "Value of the Service dimension on the relay metrics."
  value       = local.service_dimension
}

output "alarm_topic_arn" {
  description = "SNS topic that receives every alarm (subscribe pagers or chat here)."
  value       = aws_sns_topic.alarms.arn
}

output "vpc_id" {
  description = "VPC id."
  value       = aws_vpc.main.id
}

output "private_subnet_ids" {
  description = "Private subnets (relays, Redis, internal NLB). Put the NATS JetStream cluster here or peer it."
  value       = aws_subnet.private[*].id
}

output "relay_security_group_id" {
  description = "Security group of the relay tasks (allow it on your NATS cluster's 4222)."
  value       = aws_security_group.relay.id
}

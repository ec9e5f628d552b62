############################ security groups ############################
# Agents -> public NLB (UDP 4433) -> relay tasks (private subnets).
# Operators / monitoring inside the VPC -> internal NLB (TCP 2112) -> relay tasks.
# Relay tasks -> Redis (TLS 6379), NATS, Secrets Manager/ECR/CloudWatch through NAT.

resource "aws_security_group" "nlb_quic" {
  name        = "${local.name}-nlb-quic"
  description = "Public NLB: QUIC from agents"
  vpc_id      = aws_vpc.main.id
}

resource "aws_vpc_security_group_ingress_rule" "nlb_quic_in" {
  for_each          = toset(var.agent_ingress_cidrs)
  security_group_id = aws_security_group.nlb_quic.id
  description       = "QUIC from agents"
  ip_protocol       = "udp"
  from_port         = 4433
  to_port           = 4433
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_egress_rule" "nlb_quic_to_relay_quic" {
  security_group_id            = aws_security_group.nlb_quic.id
  description                  = "QUIC to relay tasks"
  ip_protocol                  = "udp"
  from_port                    = 4433
  to_port                      = 4433
  referenced_security_group_id = aws_security_group.relay.id
}

resource "aws_vpc_security_group_egress_rule" "nlb_quic_to_relay_health" {
  security_group_id            = aws_security_group.nlb_quic.id
  description                  = "Health checks to relay /readyz"
  ip_protocol                  = "tcp"
  from_port                    = 2112
  to_port                      = 2112
  referenced_security_group_id = aws_security_group.relay.id
}

resource "aws_security_group" "nlb_admin" {
  name        = "${local.name}-nlb-admin"
  description = "Internal NLB: relay admin and metrics API"
  vpc_id      = aws_vpc.main.id
}

resource "aws_vpc_security_group_ingress_rule" "nlb_admin_in" {
  for_each          = toset(concat([var.vpc_cidr], var.admin_ingress_cidrs))
  security_group_id = aws_security_group.nlb_admin.id
  description       = "Admin API from the VPC and admin_ingress_cidrs"
  ip_protocol       = "tcp"
  from_port         = 2112
  to_port           = 2112
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_egress_rule" "nlb_admin_to_relay" {
  security_group_id            = aws_security_group.nlb_admin.id
  description                  = "Admin API and health checks to relay tasks"
  ip_protocol                  = "tcp"
  from_port                    = 2112
  to_port                      = 2112
  referenced_security_group_id = aws_security_group.relay.id
}

resource "aws_security_group" "relay" {
  name        = "${local.name}-relay"
  description = "Relay tasks"
  vpc_id      = aws_vpc.main.id
}

resource "aws_vpc_security_group_ingress_rule" "relay_quic" {
  security_group_id            = aws_security_group.relay.id
  description                  = "QUIC through the public NLB (client IP preserved)"
  ip_protocol                  = "udp"
  from_port                    = 4433
  to_port                      = 4433
  referenced_security_group_id = aws_security_group.nlb_quic.id
}

resource "aws_vpc_security_group_ingress_rule" "relay_health_from_quic_nlb" {
  security_group_id            = aws_security_group.relay.id
  description                  = "NLB health checks on 2112"
  ip_protocol                  = "tcp"
  from_port                    = 2112
  to_port                      = 2112
  referenced_security_group_id = aws_security_group.nlb_quic.id
}

resource "aws_vpc_security_group_ingress_rule" "relay_admin" {
  security_group_id            = aws_security_group.relay.id
  description                  = "Admin API through the internal NLB"
  ip_protocol                  = "tcp"
  from_port                    = 2112
  to_port                      = 2112
  referenced_security_group_id = aws_security_group.nlb_admin.id
}

resource "aws_vpc_security_group_egress_rule" "relay_all" {
  security_group_id = aws_security_group.relay.id
  description       = "Redis, NATS, AWS APIs (through NAT)"
  ip_protocol       = "-1"
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_security_group" "redis" {
  name        = "${local.name}-redis"
  description = "ElastiCache Redis: routing directory"
  vpc_id      = aws_vpc.main.id
}

resource "aws_vpc_security_group_ingress_rule" "redis_from_relay" {
  security_group_id            = aws_security_group.redis.id
  description                  = "Redis TLS from relay tasks"
  ip_protocol                  = "tcp"
  from_port                    = 6379
  to_port                      = 6379
  referenced_security_group_id = aws_security_group.relay.id
}

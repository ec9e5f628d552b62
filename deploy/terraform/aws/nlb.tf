############################ Network Load Balancers ############################
# Public NLB: UDP 4433 (QUIC) -> relay tasks. Target health = HTTP GET /readyz on 2112, so a
# draining relay (readiness 503 at once) receives no new flows while existing flows finish.
# Internal NLB: TCP 2112 (admin API, metrics) reachable from the VPC and admin_ingress_cidrs only.

resource "aws_lb" "quic" {
  name                             = "${local.name}-quic"
  load_balancer_type               = "network"
  internal                         = false
  subnets                          = aws_subnet.public[*].id
  security_groups                  = [aws_security_group.nlb_quic.id]
  enable_cross_zone_load_balancing = true
  enable_deletion_protection       = var.nlb_deletion_protection
}

resource "aws_lb_target_group" "quic" {
  name        = "${local.name}-quic"
  port        = 4433
  protocol    = "UDP"
  target_type = "ip"
  vpc_id      = aws_vpc.main.id

  # Existing UDP flows keep going to a deregistering task for this long (> drain deadline), then
  # are terminated; by then the relay has sent Drain and its agents have reconnected elsewhere.
  deregistration_delay   = ceil(var.drain_deadline_ms / 1000) + 10
  connection_termination = true

  health_check {
    enabled             = true
    protocol            = "HTTP"
    port                = "2112"
    path                = "/readyz"
    matcher             = "200"
    interval            = 10
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 2
  }
}

resource "aws_lb_listener" "quic" {
  load_balancer_arn = aws_lb.quic.arn
  port              = 4433
  protocol          = "UDP"

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.quic.arn
  }
}

resource "aws_lb" "admin" {
  name                             = "${local.name}-admin"
  load_balancer_type               = "network"
  internal                         = true
  subnets                          = aws_subnet.private[*].id
  security_groups                  = [aws_security_group.nlb_admin.id]
  enable_cross_zone_load_balancing = true
  enable_deletion_protection       = var.nlb_deletion_protection
}

resource "aws_lb_target_group" "admin" {
  name                 = "${local.name}-admin"
  port                 = 2112
  protocol             = "TCP"
  target_type          = "ip"
  vpc_id               = aws_vpc.main.id
  deregistration_delay = 10

  health_check {
    enabled             = true
    protocol            = "HTTP"
    port                = "traffic-port"
    path                = "/healthz"
    matcher             = "200"
    interval            = 10
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 2
  }
}

resource "aws_lb_listener" "admin" {
  load_balancer_arn = aws_lb.admin.arn
  port              = 2112
  protocol          = "TCP"

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.admin.arn
  }
}

############################ ECS Fargate: relay service ############################
# Task = config-init (writes relay.toml, TLS files and the agent tokens file from Secrets Manager
# into a task-local volume, then exits) + relay + ADOT collector (scrapes 127.0.0.1:2112/metrics
# into CloudWatch metrics via EMF).
#
# RELAY_ID is not set: the relay falls back to the hostname, which on Fargate (awsvpc) is unique
# per task (ip-10-40-x-y...).

resource "aws_ecr_repository" "relay" {
  count                = var.create_ecr_repository ? 1 : 0
  name                 = "${var.name}/contrail-relay"
  image_tag_mutability = "IMMUTABLE"

  image_scanning_configuration {
    scan_on_push = true
  }

  encryption_configuration {
    encryption_type = "KMS"
  }
}

resource "aws_ecs_cluster" "main" {
  name = local.name

  setting {
    name  = "containerInsights"
    value = var.container_insights ? "enabled" : "disabled"
  }
}

resource "aws_cloudwatch_log_group" "relay" {
  name              = "/ecs/${local.name}/relay"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.logs_kms_key_arn
}

locals {
  run_dir = "/etc/contrail/run"

  log_configuration = {
    logDriver = "awslogs"
    options = {
      "awslogs-group"         = aws_cloudwatch_log_group.relay.name
      "awslogs-region"        = var.aws_region
      "awslogs-stream-prefix" = "relay"
      # Never block the relay on log delivery.
      "mode"            = "non-blocking"
      "max-buffer-size" = "4m"
    }
  }

  # Runs as root only to chown the files it writes to the relay's uid; no network listeners,
  # read-only root filesystem, exits before the relay starts.
  config_init_script = <<-EOT
    set -eu
    umask 077
    d=/etc/contrail/run
    printf '%s' "$CONFIG_TOML_B64" | base64 -d > "$d/relay.toml"
    printf '%s\n' "$TLS_CERT_PEM" > "$d/tls.crt"
    printf '%s\n' "$TLS_KEY_PEM" > "$d/tls.key"
    printf '%s\n' "$AGENT_TOKENS" > "$d/auth-tokens"
    chown 10001:10001 "$d" "$d/relay.toml" "$d/tls.crt" "$d/tls.key" "$d/auth-tokens"
    chmod 0400 "$d/relay.toml" "$d/tls.crt" "$d/tls.key" "$d/auth-tokens"
  EOT

  config_init_container = {
    name                   = "config-init"
    image                  = var.relay_image
    essential              = false
    user                   = "0:0"
    readonlyRootFilesystem = true
    entryPoint             = ["/bin/sh", "-c"]
    command                = [local.config_init_script]
    environment = [
      { name = "CONFIG_TOML_B64", value = base64encode(local.relay_toml) },
    ]
    secrets = [
      { name = "TLS_CERT_PEM", valueFrom = aws_secretsmanager_secret.tls_cert.arn },
      { name = "TLS_KEY_PEM", valueFrom = aws_secretsmanager_secret.tls_key.arn },
      { name = "AGENT_TOKENS", valueFrom = aws_secretsmanager_secret.agent_tokens.arn },
    ]
    mountPoints = [
      { sourceVolume = "contrail-run", containerPath = local.run_dir, readOnly = false },
    ]
    linuxParameters = {
      capabilities = {
        drop = ["NET_RAW", "NET_BIND_SERVICE", "SETUID", "SETGID", "SETPCAP", "SETFCAP", "MKNOD", "AUDIT_WRITE", "KILL", "SYS_CHROOT", "FSETID"]
      }
    }
    logConfiguration = local.log_configuration
  }

  relay_container = {
    name                   = "relay"
    image                  = var.relay_image
    essential              = true
    user                   = "10001:10001"
    readonlyRootFilesystem = true
    # SIGTERM starts the drain; SIGKILL only after stopTimeout (> drain.deadline_ms).
    stopTimeout = var.stop_timeout_seconds
    portMappings = [
      { name = "quic", containerPort = 4433, hostPort = 4433, protocol = "udp" },
      { name = "http", containerPort = 2112, hostPort = 2112, protocol = "tcp" },
    ]
    environment = [
      { name = "CONTRAIL_CONFIG", value = "${local.run_dir}/relay.toml" },
      { name = "CONTRAIL_LISTEN", value = "0.0.0.0:4433" },
      { name = "CONTRAIL_HTTP_LISTEN", value = "0.0.0.0:2112" },
      { name = "CONTRAIL_AUTH_TOKENS_FILE", value = "${local.run_dir}/auth-tokens" },
      { name = "CONTRAIL_LOG", value = var.relay_log_level },
    ]
    secrets = [
      { name = "CONTRAIL_ADMIN_TOKEN", valueFrom = aws_secretsmanager_secret.admin_token.arn },
      { name = "CONTRAIL_JWT_SECRET", valueFrom = aws_secretsmanager_secret.jwt_key.arn },
      { name = "REDIS_PASSWORD", valueFrom = aws_secretsmanager_secret.redis_auth.arn },
    ]
    mountPoints = [
      { sourceVolume = "contrail-run", containerPath = local.run_dir, readOnly = true },
      { sourceVolume = "tmp", containerPath = "/tmp", readOnly = false },
    ]
    dependsOn = [
      { containerName = "config-init", condition = "SUCCESS" },
    ]
    healthCheck = {
      command     = ["CMD", "contrail-relay", "healthcheck", "--url", "http://127.0.0.1:2112"]
      interval    = 10
      timeout     = 3
      retries     = 3
      startPeriod = 15
    }
    linuxParameters = {
      initProcessEnabled = true
      capabilities = {
        drop = ["ALL"]
      }
    }
    ulimits = [
      { name = "nofile", softLimit = 65536, hardLimit = 65536 },
    ]
    logConfiguration = local.log_configuration
  }

  adot_container = {
    name                   = "adot-collector"
    image                  = var.adot_image
    essential              = false
    readonlyRootFilesystem = true
    command                = ["--config=env:AOT_CONFIG_CONTENT"]
    environment = [
      { name = "AOT_CONFIG_CONTENT", value = local.adot_config },
    ]
    mountPoints = [
      { sourceVolume = "adot-tmp", containerPath = "/tmp", readOnly = false },
    ]
    dependsOn = [
      { containerName = "relay", condition = "START" },
    ]
    linuxParameters = {
      capabilities = {
        drop = ["ALL"]
      }
    }
    logConfiguration = merge(local.log_configuration, {
      options = merge(local.log_configuration.options, { "awslogs-stream-prefix" = "adot" })
    })
  }
}

resource "aws_ecs_task_definition" "relay" {
  family                   = "${local.name}-relay"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.relay_cpu
  memory                   = var.relay_memory
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = var.relay_cpu_architecture
  }

  volume {
    name = "contrail-run"
  }

  volume {
    name = "tmp"
  }

  volume {
    name = "adot-tmp"
  }

  container_definitions = jsonencode([
    local.config_init_container,
    local.relay_container,
    local.adot_container,
  ])

  lifecycle {
    precondition {
      condition     = var.stop_timeout_seconds * 1000 > var.drain_deadline_ms + 5000
      error_message = "stop_timeout_seconds must exceed drain_deadline_ms by at least 5 s, or SIGKILL cuts the drain short."
    }
  }
}

resource "aws_ecs_service" "relay" {
  name                   = "${local.name}-relay"
  cluster                = aws_ecs_cluster.main.id
  task_definition        = aws_ecs_task_definition.relay.arn
  desired_count          = var.relay_desired_count
  launch_type            = "FARGATE"
  platform_version       = "LATEST"
  enable_execute_command = false
  propagate_tags         = "SERVICE"

  # Rolling deploy: start new tasks first, stop (drain) old ones after the new ones are healthy.
  deployment_minimum_healthy_percent = 100
  deployment_maximum_percent         = 200
  health_check_grace_period_seconds  = 30

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  network_configuration {
    subnets          = aws_subnet.private[*].id
    security_groups  = [aws_security_group.relay.id]
    assign_public_ip = false
  }

  load_balancer {
    target_group_arn = aws_lb_target_group.quic.arn
    container_name   = "relay"
    container_port   = 4433
  }

  load_balancer {
    target_group_arn = aws_lb_target_group.admin.arn
    container_name   = "relay"
    container_port   = 2112
  }

  lifecycle {
    # Autoscaling owns the count after creation.
    ignore_changes = [desired_count]
  }

  depends_on = [
    aws_lb_listener.quic,
    aws_lb_listener.admin,
    aws_iam_role_policy.execution_secrets,
  ]
}

############################ autoscaling ############################

resource "aws_appautoscaling_target" "relay" {
  service_namespace  = "ecs"
  scalable_dimension = "ecs:service:DesiredCount"
  resource_id        = "service/${aws_ecs_cluster.main.name}/${aws_ecs_service.relay.name}"
  min_capacity       = var.relay_min_count
  max_capacity       = var.relay_max_count
}

resource "aws_appautoscaling_policy" "relay_cpu" {
  name               = "${local.name}-relay-cpu"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.relay.service_namespace
  scalable_dimension = aws_appautoscaling_target.relay.scalable_dimension
  resource_id        = aws_appautoscaling_target.relay.resource_id

  target_tracking_scaling_policy_configuration {
    target_value = var.autoscaling_cpu_target
    # Scale in slowly: every removed task drains its agents onto the others.
    scale_in_cooldown  = 600
    scale_out_cooldown = 60

    predefined_metric_specification {
      predefined_metric_type = "ECSServiceAverageCPUUtilization"
    }
  }
}

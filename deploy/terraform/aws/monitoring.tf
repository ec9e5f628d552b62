############################ CloudWatch: metrics, alarms, notifications ############################
# The ADOT sidecar in every relay task scrapes 127.0.0.1:2112/metrics and writes the selected
# series as Embedded Metric Format logs to the metrics log group; CloudWatch extracts them into
# namespace "Contrail" with dimension Service (latency histograms as statistic sets, plus two
# counters for the p99 alarm, see below).
# Counters are converted to per-interval deltas by the exporter, so Sum over a period = events.

resource "aws_cloudwatch_log_group" "metrics" {
  name              = "/ecs/${local.name}/metrics"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.logs_kms_key_arn
}

resource "aws_sns_topic" "alarms" {
  name              = "${local.name}-alarms"
  kms_master_key_id = "alias/aws/sns"
}

resource "aws_sns_topic_subscription" "alarm_email" {
  count     = var.alarm_email == "" ? 0 : 1
  topic_arn = aws_sns_topic.alarms.arn
  protocol  = "email"
  endpoint  = var.alarm_email
}

locals {
  relay_dimensions = { Service = local.service_dimension }
  ecs_dimensions = {
    ClusterName = aws_ecs_cluster.main.name
    ServiceName = aws_ecs_service.relay.name
  }
  alarm_actions = [aws_sns_topic.alarms.arn]
}

# Any relay task not ready (and not draining) for 3 minutes. Missing data = the sidecar or the
# relay is gone, which is as bad.
resource "aws_cloudwatch_metric_alarm" "relay_not_ready" {
  alarm_name          = "${local.name}-relay-not-ready"
  alarm_description   = "A relay reports contrail_ready = 0 (endpoint not bound or a required sink unhealthy). RUNBOOK: ContrailRelayNotReady."
  namespace           = local.metrics_namespace
  metric_name         = "contrail_ready"
  dimensions          = local.relay_dimensions
  statistic           = "Minimum"
  period              = 60
  evaluation_periods  = 3
  datapoints_to_alarm = 3
  threshold           = 1
  comparison_operator = "LessThanThreshold"
  treat_missing_data  = "breaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

resource "aws_cloudwatch_metric_alarm" "sink_drops" {
  alarm_name          = "${local.name}-sink-drops"
  alarm_description   = "Optional sinks dropped frames (contrail_sink_dropped_total) for 5 minutes. RUNBOOK: ContrailSinkDropping."
  namespace           = local.metrics_namespace
  metric_name         = "contrail_sink_dropped_total"
  dimensions          = local.relay_dimensions
  statistic           = "Sum"
  period              = 60
  evaluation_periods  = 5
  datapoints_to_alarm = 5
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

resource "aws_cloudwatch_metric_alarm" "sink_unhealthy" {
  alarm_name          = "${local.name}-sink-unhealthy"
  alarm_description   = "A sink reports contrail_sink_healthy = 0 for 3 minutes. RUNBOOK: ContrailSinkUnhealthy."
  namespace           = local.metrics_namespace
  metric_name         = "contrail_sink_healthy"
  dimensions          = local.relay_dimensions
  statistic           = "Minimum"
  period              = 60
  evaluation_periods  = 3
  datapoints_to_alarm = 3
  threshold           = 1
  comparison_operator = "LessThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

# p99 from the histogram: p99 > threshold exactly when more than 1 % of acks took longer than the
# threshold (a bucket boundary). The ADOT collector sends the threshold's bucket and the ack
# count as per-period counters summed over every relay (templates/adot-config.yaml.tftpl), so
# this is the fleet's p99, as histogram_quantile computes it in Prometheus.
resource "aws_cloudwatch_metric_alarm" "ack_latency_p99" {
  alarm_name          = "${local.name}-ack-latency-p99"
  alarm_description   = "Fleet p99 receive-to-ack latency above threshold (more than 1% of acks slower) for 8 of 10 minutes (PROVISIONAL threshold). RUNBOOK: ContrailAckLatencyP99High."
  evaluation_periods  = 10
  datapoints_to_alarm = 8
  threshold           = 1
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions

  metric_query {
    id          = "slow_percent"
    expression  = "IF(acks > 0, 100 * (acks - within) / acks, 0)"
    label       = "Percent of acks slower than the p99 threshold"
    return_data = true
  }

  metric_query {
    id = "acks"
    metric {
      namespace   = local.metrics_namespace
      metric_name = "contrail_ack_latency_seconds_count"
      dimensions  = local.relay_dimensions
      stat        = "Sum"
      period      = 60
    }
  }

  metric_query {
    id = "within"
    metric {
      namespace   = local.metrics_namespace
      metric_name = "contrail_ack_latency_seconds_within_threshold"
      dimensions  = local.relay_dimensions
      stat        = "Sum"
      period      = 60
    }
  }
}

resource "aws_cloudwatch_metric_alarm" "redis_publish_errors" {
  alarm_name          = "${local.name}-redis-publish-errors"
  alarm_description   = "Relays fail to publish drone:{id} routing keys to Redis for 5 minutes. RUNBOOK: ContrailRedisPublishErrors."
  namespace           = local.metrics_namespace
  metric_name         = "contrail_redis_publish_errors_total"
  dimensions          = local.relay_dimensions
  statistic           = "Sum"
  period              = 60
  evaluation_periods  = 5
  datapoints_to_alarm = 5
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

resource "aws_cloudwatch_metric_alarm" "credits_exhausted" {
  alarm_name          = "${local.name}-credits-exhausted"
  alarm_description   = "Agents keep running out of credits (> 3000/min fleet-wide for 10 minutes, PROVISIONAL): acks are slow. RUNBOOK: ContrailCreditsExhaustedSpike."
  namespace           = local.metrics_namespace
  metric_name         = "contrail_credits_exhausted_total"
  dimensions          = local.relay_dimensions
  statistic           = "Sum"
  period              = 60
  evaluation_periods  = 10
  datapoints_to_alarm = 10
  threshold           = 3000
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

resource "aws_cloudwatch_metric_alarm" "ecs_cpu" {
  alarm_name          = "${local.name}-relay-cpu"
  alarm_description   = "Relay service average CPU above threshold for 10 minutes (autoscaling is not keeping up or is at relay_max_count)."
  namespace           = "AWS/ECS"
  metric_name         = "CPUUtilization"
  dimensions          = local.ecs_dimensions
  statistic           = "Average"
  period              = 60
  evaluation_periods  = 10
  datapoints_to_alarm = 10
  threshold           = var.cpu_alarm_threshold_percent
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "missing"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

resource "aws_cloudwatch_metric_alarm" "ecs_memory" {
  alarm_name          = "${local.name}-relay-memory"
  alarm_description   = "Relay service average memory above threshold for 10 minutes (sessions per task too high for relay_memory)."
  namespace           = "AWS/ECS"
  metric_name         = "MemoryUtilization"
  dimensions          = local.ecs_dimensions
  statistic           = "Average"
  period              = 60
  evaluation_periods  = 10
  datapoints_to_alarm = 10
  threshold           = var.memory_alarm_threshold_percent
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "missing"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

resource "aws_cloudwatch_metric_alarm" "nlb_no_healthy_targets" {
  alarm_name        = "${local.name}-quic-no-healthy-targets"
  alarm_description = "The QUIC target group has no ready relay: agents cannot connect."
  namespace         = "AWS/NetworkELB"
  metric_name       = "HealthyHostCount"
  dimensions = {
    LoadBalancer = aws_lb.quic.arn_suffix
    TargetGroup  = aws_lb_target_group.quic.arn_suffix
  }
  statistic           = "Minimum"
  period              = 60
  evaluation_periods  = 2
  datapoints_to_alarm = 2
  threshold           = 1
  comparison_operator = "LessThanThreshold"
  treat_missing_data  = "breaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

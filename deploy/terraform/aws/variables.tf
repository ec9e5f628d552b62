############################ general ############################

variable "aws_region" {
  description = "AWS region to deploy into (for example eu-west-1)."
  type        = string
}

variable "name" {
  description = "Name prefix for every resource."
  type        = string
  default     = "contrail"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,11}$", var.name))
    error_message = "name must be 2-12 characters (load balancer names are limited to 32): lowercase letters, digits and dashes, starting with a letter."
  }
}

variable "environment" {
  description = "Environment label (prod, staging, dev); part of resource names and tags."
  type        = string
  default     = "prod"

  validation {
    condition     = can(regex("^[a-z][a-z0-9]{1,9}$", var.environment))
    error_message = "environment must be 2-10 lowercase letters or digits, starting with a letter."
  }
}

variable "tags" {
  description = "Extra tags applied to every resource."
  type        = map(string)
  default     = {}
}

############################ network ############################

variable "vpc_cidr" {
  description = "CIDR block of the VPC. Public and private /20 subnets are carved out of it."
  type        = string
  default     = "10.40.0.0/16"
}

variable "az_count" {
  description = "Number of availability zones to spread subnets, relays and Redis across."
  type        = number
  default     = 3

  validation {
    condition     = var.az_count >= 2 && var.az_count <= 6
    error_message = "az_count must be between 2 and 6."
  }
}

variable "nat_gateway_per_az" {
  description = "One NAT gateway per AZ (true, survives an AZ loss) or a single shared one (false, cheaper, dev only)."
  type        = bool
  default     = true
}

variable "enable_flow_logs" {
  description = "Send VPC flow logs (rejected traffic) to CloudWatch Logs."
  type        = bool
  default     = true
}

variable "agent_ingress_cidrs" {
  description = "CIDRs allowed to reach QUIC (UDP 4433) on the public NLB. Narrow it to your carriers' ranges if you can."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "admin_ingress_cidrs" {
  description = "Extra CIDRs (besides the VPC) allowed to reach the INTERNAL admin NLB on TCP 2112 (for example a VPN range). Empty means VPC only."
  type        = list(string)
  default     = []
}

variable "nlb_deletion_protection" {
  description = "Deletion protection on both load balancers."
  type        = bool
  default     = true
}

############################ relay service ############################

variable "relay_image" {
  description = "Relay container image, preferably an ECR URI with an immutable tag or digest (built from deploy/Dockerfile, target relay)."
  type        = string
}

variable "create_ecr_repository" {
  description = "Create an ECR repository (immutable tags, scan on push) to push the relay image to."
  type        = bool
  default     = true
}

variable "relay_desired_count" {
  description = "Initial number of relay tasks (autoscaling adjusts it between relay_min_count and relay_max_count)."
  type        = number
  default     = 3
}

variable "relay_min_count" {
  description = "Autoscaling lower bound for relay tasks."
  type        = number
  default     = 2
}

variable "relay_max_count" {
  description = "Autoscaling upper bound for relay tasks."
  type        = number
  default     = 12
}

variable "relay_cpu" {
  description = "Fargate task CPU units (1024 = 1 vCPU). PROVISIONAL: 1 vCPU ~ 300k frames/s; update from benchmarks."
  type        = number
  default     = 1024
}

variable "relay_memory" {
  description = "Fargate task memory (MiB). PROVISIONAL: ~10k sessions per 256 MiB plus sink queues; update from benchmarks."
  type        = number
  default     = 2048
}

variable "relay_cpu_architecture" {
  description = "Fargate CPU architecture of the relay image: X86_64 or ARM64."
  type        = string
  default     = "X86_64"

  validation {
    condition     = contains(["X86_64", "ARM64"], var.relay_cpu_architecture)
    error_message = "relay_cpu_architecture must be X86_64 or ARM64."
  }
}

variable "relay_max_sessions" {
  description = "limits.max_sessions per relay task. PROVISIONAL: keep it at or below ~10k per 256 MiB of task memory."
  type        = number
  default     = 10000
}

variable "autoscaling_cpu_target" {
  description = "Target average CPU utilisation (%) for relay autoscaling."
  type        = number
  default     = 60
}

variable "drain_deadline_ms" {
  description = "drain.deadline_ms: how long a stopping relay has to send Drain, flush sinks and remove routing keys."
  type        = number
  default     = 20000
}

variable "stop_timeout_seconds" {
  description = "ECS stopTimeout for the relay container (SIGTERM to SIGKILL). Must exceed drain_deadline_ms; Fargate allows at most 120."
  type        = number
  default     = 45

  validation {
    condition     = var.stop_timeout_seconds >= 2 && var.stop_timeout_seconds <= 120
    error_message = "stop_timeout_seconds must be between 2 and 120 (Fargate limit)."
  }
}

variable "auth_mode" {
  description = "Agent authentication: token (static tokens from Secrets Manager) or jwt (HMAC JWTs). none is refused here."
  type        = string
  default     = "token"

  validation {
    condition     = contains(["token", "jwt"], var.auth_mode)
    error_message = "auth_mode must be token or jwt (none is for local evaluation only)."
  }
}

variable "nats_url" {
  description = "URL of the clustered NATS JetStream the relays publish to (required sink), for example nats://nats.internal:4222. Not created by this blueprint."
  type        = string
}

variable "nats_subject" {
  description = "JetStream subject template for published frames."
  type        = string
  default     = "contrail.telemetry.{agent_id}"
}

variable "relay_log_level" {
  description = "CONTRAIL_LOG filter for the relay."
  type        = string
  default     = "info"
}

variable "adot_image" {
  description = "AWS Distro for OpenTelemetry collector image (sidecar scraping /metrics into CloudWatch via EMF)."
  type        = string
  default     = "public.ecr.aws/aws-observability/aws-otel-collector:v0.40.0"
}

############################ redis ############################

variable "redis_node_type" {
  description = "ElastiCache node type for the routing directory."
  type        = string
  default     = "cache.t4g.medium"
}

variable "redis_engine_version" {
  description = "ElastiCache Redis engine version."
  type        = string
  default     = "7.1"
}

variable "redis_num_cache_clusters" {
  description = "Nodes in the replication group (1 primary + replicas). 2 or more enables Multi-AZ automatic failover."
  type        = number
  default     = 2

  validation {
    condition     = var.redis_num_cache_clusters >= 1 && var.redis_num_cache_clusters <= 6
    error_message = "redis_num_cache_clusters must be between 1 and 6."
  }
}

variable "redis_kms_key_arn" {
  description = "KMS key for ElastiCache at-rest encryption. Null uses the AWS managed key (encryption stays on)."
  type        = string
  default     = null
}

############################ secrets ############################

variable "secrets_kms_key_arn" {
  description = "KMS key for the Secrets Manager secrets. Null uses aws/secretsmanager."
  type        = string
  default     = null
}

variable "secrets_recovery_window_days" {
  description = "Days a deleted secret can be restored (0 deletes at once: dev only)."
  type        = number
  default     = 30
}

variable "tls_cert_pem" {
  description = "Relay TLS certificate chain (PEM). Leave empty to put it into the secret out of band (keeps it out of Terraform state)."
  type        = string
  default     = ""
  sensitive   = true
}

variable "tls_key_pem" {
  description = "Relay TLS private key (PEM). Leave empty to put it into the secret out of band (recommended)."
  type        = string
  default     = ""
  sensitive   = true
}

variable "agent_tokens" {
  description = "Contents of the agent tokens file (CONTRAIL_AUTH_TOKENS_FILE). Leave empty to put it into the secret out of band (recommended)."
  type        = string
  default     = ""
  sensitive   = true
}

############################ monitoring ############################

variable "log_retention_days" {
  description = "CloudWatch Logs retention for relay logs, EMF metrics and flow logs."
  type        = number
  default     = 30
}

variable "logs_kms_key_arn" {
  description = "KMS key for the CloudWatch log groups. Null uses CloudWatch's default encryption."
  type        = string
  default     = null
}

variable "container_insights" {
  description = "Enable ECS Container Insights on the cluster."
  type        = bool
  default     = true
}

variable "alarm_email" {
  description = "Email subscribed to the alarm SNS topic (confirm the subscription mail). Empty for none."
  type        = string
  default     = ""
}

variable "ack_latency_p99_threshold_seconds" {
  description = "Alarm when the fleet's p99 receive-to-ack latency exceeds this (PROVISIONAL): more than 1% of acks slower. Must be a bucket boundary of contrail_ack_latency_seconds."
  type        = number
  default     = 0.5
  validation {
    condition     = contains([0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30], var.ack_latency_p99_threshold_seconds)
    error_message = "ack_latency_p99_threshold_seconds must be a bucket boundary of contrail_ack_latency_seconds (0.00005 ... 30, see docs/sre.md)."
  }
}

variable "cpu_alarm_threshold_percent" {
  description = "Alarm when the relay service's average CPU exceeds this percentage."
  type        = number
  default     = 80
}

variable "memory_alarm_threshold_percent" {
  description = "Alarm when the relay service's average memory exceeds this percentage."
  type        = number
  default     = 80
}

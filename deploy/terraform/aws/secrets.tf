############################ Secrets Manager ############################
# Generated here: admin token, Redis AUTH token, JWT HMAC key (they live in Terraform state:
# use an encrypted remote backend).
# Supplied by the operator: TLS certificate and key, agent tokens. Terraform creates the secrets;
# values come from the sensitive variables when set, otherwise put them out of band (README).
# ECS injects all of them into the task at start ("secrets" in the container definitions).

resource "random_password" "admin_token" {
  length  = 48
  special = false
}

resource "random_password" "redis_auth" {
  # ElastiCache AUTH: 16-128 printable characters, no @ " / : alphanumerics only.
  length  = 64
  special = false
}

resource "random_password" "jwt_key" {
  length  = 64
  special = false
}

resource "aws_secretsmanager_secret" "admin_token" {
  name                    = "${local.name}/relay/admin-token"
  description             = "Bearer token for the relay admin API (POST /v1/admin/drain)"
  kms_key_id              = var.secrets_kms_key_arn
  recovery_window_in_days = var.secrets_recovery_window_days
}

resource "aws_secretsmanager_secret_version" "admin_token" {
  secret_id     = aws_secretsmanager_secret.admin_token.id
  secret_string = random_password.admin_token.result
}

resource "aws_secretsmanager_secret" "redis_auth" {
  name                    = "${local.name}/redis/auth-token"
  description             = "ElastiCache AUTH token (REDIS_PASSWORD for the relays)"
  kms_key_id              = var.secrets_kms_key_arn
  recovery_window_in_days = var.secrets_recovery_window_days
}

resource "aws_secretsmanager_secret_version" "redis_auth" {
  secret_id     = aws_secretsmanager_secret.redis_auth.id
  secret_string = random_password.redis_auth.result
}

resource "aws_secretsmanager_secret" "jwt_key" {
  name                    = "${local.name}/relay/jwt-key"
  description             = "HMAC key for agent JWTs (CONTRAIL_JWT_SECRET, auth_mode = jwt)"
  kms_key_id              = var.secrets_kms_key_arn
  recovery_window_in_days = var.secrets_recovery_window_days
}

resource "aws_secretsmanager_secret_version" "jwt_key" {
  secret_id     = aws_secretsmanager_secret.jwt_key.id
  secret_string = random_password.jwt_key.result
}

resource "aws_secretsmanager_secret" "agent_tokens" {
  name                    = "${local.name}/relay/agent-tokens"
  description             = "Agent tokens file contents (CONTRAIL_AUTH_TOKENS_FILE, auth_mode = token)"
  kms_key_id              = var.secrets_kms_key_arn
  recovery_window_in_days = var.secrets_recovery_window_days
}

resource "aws_secretsmanager_secret_version" "agent_tokens" {
  count         = nonsensitive(length(var.agent_tokens) > 0) ? 1 : 0
  secret_id     = aws_secretsmanager_secret.agent_tokens.id
  secret_string = var.agent_tokens
}

resource "aws_secretsmanager_secret" "tls_cert" {
  name                    = "${local.name}/relay/tls-cert"
  description             = "Relay TLS certificate chain (PEM)"
  kms_key_id              = var.secrets_kms_key_arn
  recovery_window_in_days = var.secrets_recovery_window_days
}

resource "aws_secretsmanager_secret_version" "tls_cert" {
  count         = nonsensitive(length(var.tls_cert_pem) > 0) ? 1 : 0
  secret_id     = aws_secretsmanager_secret.tls_cert.id
  secret_string = var.tls_cert_pem
}

resource "aws_secretsmanager_secret" "tls_key" {
  name                    = "${local.name}/relay/tls-key"
  description             = "Relay TLS private key (PEM)"
  kms_key_id              = var.secrets_kms_key_arn
  recovery_window_in_days = var.secrets_recovery_window_days
}

resource "aws_secretsmanager_secret_version" "tls_key" {
  count         = nonsensitive(length(var.tls_key_pem) > 0) ? 1 : 0
  secret_id     = aws_secretsmanager_secret.tls_key.id
  secret_string = var.tls_key_pem
}

locals {
  relay_secret_arns = [
    aws_secretsmanager_secret.admin_token.arn,
    aws_secretsmanager_secret.redis_auth.arn,
    aws_secretsmanager_secret.jwt_key.arn,
    aws_secretsmanager_secret.agent_tokens.arn,
    aws_secretsmanager_secret.tls_cert.arn,
    aws_secretsmanager_secret.tls_key.arn,
  ]
}

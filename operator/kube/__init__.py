"""The Kubernetes side: CRDs, the pure workload planner, kopf handlers, and the CR-backed gateway."""

GROUP = "infernetes.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
ENDPOINTS = "inferenceendpoints"
DEPLOYMENTS = "modeldeployments"
ENDPOINT_KIND = "InferenceEndpoint"
DEPLOYMENT_KIND = "ModelDeployment"

# Labels on everything the operator creates.
LABEL_MANAGED = "app.kubernetes.io/managed-by"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_DEPLOYMENT = f"{GROUP}/deployment"  # the (Kubernetes name of the) model deployment
LABEL_MODEL = f"{GROUP}/model"
ANNOTATION_DEPLOYMENT_ID = f"{GROUP}/deployment-id"  # the Elasticsearch id, which may not be a valid name
ANNOTATION_MODEL_ID = f"{GROUP}/model-id"
ANNOTATION_FORCE_DELETE = f"{GROUP}/force-delete"
ANNOTATION_AUTOSCALER = f"{GROUP}/autoscaler-state"
MANAGER = "infernetes"

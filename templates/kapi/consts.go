package kapi

// The enumerated values the catalog uses, spelled as the API spells them.
const (
	OrderedReadyPodManagement                      PodManagementPolicyType                  = "OrderedReady"
	ParallelPodManagement                          PodManagementPolicyType                  = "Parallel"
	RetainPersistentVolumeClaimRetentionPolicyType PersistentVolumeClaimRetentionPolicyType = "Retain"
	RollingUpdateStatefulSetStrategyType           StatefulSetUpdateStrategyType            = "RollingUpdate"
	ForbidConcurrent                               ConcurrencyPolicy                        = "Forbid"

	ClusterIPNone                            = "None"
	ProtocolTCP   Protocol                   = "TCP"
	ReadWriteOnce PersistentVolumeAccessMode = "ReadWriteOnce"

	ResourceCPU     ResourceName = "cpu"
	ResourceMemory  ResourceName = "memory"
	ResourceStorage ResourceName = "storage"

	RestartPolicyNever     RestartPolicy = "Never"
	RestartPolicyOnFailure RestartPolicy = "OnFailure"
	SecretTypeOpaque       SecretType    = "Opaque"
	ServiceTypeClusterIP   ServiceType   = "ClusterIP"
	StorageMediumMemory    StorageMedium = "Memory"
	URISchemeHTTP          URIScheme     = "HTTP"
)

// ResourceName names a compute or storage resource ("cpu", "memory").
type ResourceName string

// ResourceList maps resources to amounts.
type ResourceList map[ResourceName]Quantity

// UID is an object's unique ID, set by the API server.
type UID string

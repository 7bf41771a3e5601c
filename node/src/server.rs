//! Start-up and shutdown of a node: storage, identity, ring (create, join or
//! reload), the gRPC server, gossip and repair tasks.

use crate::config::Config;
use crate::gossip::join_through_seeds;
use crate::meta::Meta;
use crate::node::Node;
use crate::peers::Peers;
use crate::pool::StoragePool;
use crate::service::admin::AdminService;
use crate::service::kv::KvService;
use crate::service::peer::PeerService;
use crate::stats::Stats;
use crate::store::{LocalStore, StoreIdentity};
use crate::view::ClusterView;
use anyhow::{bail, Context as _};
use kv_cluster::membership::Membership;
use kv_cluster::ring::Ring;
use kv_cluster::{format_node_id, NodeId};
use kv_proto::v1::admin_server::AdminServer;
use kv_proto::v1::kv_server::KvServer;
use kv_proto::v1::peer_server::PeerServer;
use kv_proto::v1::JoinRequest;
use kv_proto::FORMAT_VERSION;
use kv_storage::{GroupCommit, Space};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;

/// Runs a node until SIGINT or SIGTERM.
pub async fn run(config: Config) -> anyhow::Result<()> {
    config.validate()?;

    // Bind first, so a taken port fails before anything is created on disk.
    let incoming = TcpIncoming::bind(config.listen)
        .with_context(|| {
            format!(
                "cannot listen on {}; is another kv-node or program using it? Choose another --listen",
                config.listen
            )
        })?
        .with_nodelay(Some(true));

    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    let mut config = config;
    config.data_dir = std::fs::canonicalize(&config.data_dir).with_context(|| {
        format!(
            "cannot resolve data directory {}",
            config.data_dir.display()
        )
    })?;
    let config = config;
    let data_dir = config.data_dir.display().to_string();
    if let Some(marker) = Meta::left_marker(&config.data_dir) {
        bail!(
            "{data_dir} belongs to a node that was decommissioned ({marker}); it must not rejoin with its old data. Wipe the directory to start this machine as a new node"
        );
    }

    // Storage and identity.
    let engine_kind = config.engine;
    let path = config.data_dir.clone();
    let engine = tokio::task::spawn_blocking(move || kv_storage::open(engine_kind, &path))
        .await?
        .with_context(|| format!("cannot open the {engine_kind} storage in {data_dir}"))?;
    let commit = GroupCommit::start(engine.clone(), config.sync_mode());
    let (meta, info, holds_data) = {
        let engine = engine.clone();
        let commit = commit.clone();
        let data_dir = config.data_dir.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let holds_data = !engine.is_empty(Space::Data)?;
            let (meta, info) = Meta::open(engine, commit, data_dir)?;
            Ok((meta, info, holds_data))
        })
        .await??
    };
    if info.unclean_restart {
        tracing::warn!(restart_mark = info.restart_mark, "the previous run did not stop cleanly; keys it wrote last will continue under fresh epochs");
    }

    let address = config.listen.to_string();
    let peers = Peers::new(config.grpc_message_limit(), config.peer_keepalive());
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    spawn_signal_handler(shutdown_tx.clone());

    let (ring, membership) = match info.ring {
        Some(ring) => {
            if config.bootstrap {
                bail!(
                    "--bootstrap creates a new cluster only from an empty data directory, but {data_dir} already holds the ring of cluster {}; drop --bootstrap to restart this node",
                    ring.cluster_id
                );
            }
            check_stored_shape(&ring, &config)?;
            (ring, Membership::default())
        }
        None if config.seeds.is_empty() || config.bootstrap => {
            if holds_data {
                bail!("{data_dir} holds data but no ring; it is not a usable node directory. Wipe it or point --data-dir elsewhere");
            }
            let cluster_id = format!("{:032x}", rand::random::<u128>());
            let ring = Ring::new(
                cluster_id.clone(),
                config.partitions,
                config.n,
                info.node_id,
            )?;
            save_ring(&meta, &ring).await?;
            tracing::info!(%cluster_id, partitions = config.partitions, n = config.n, "created a new cluster");
            (ring, Membership::default())
        }
        None => {
            let request = JoinRequest {
                format_version: FORMAT_VERSION,
                node_id: info.node_id,
                address: address.clone(),
                n: config.n,
                partitions: config.partitions,
                generation: info.generation,
            };
            let (ring, membership) =
                join_through_seeds(&peers, &config.seeds, request, shutdown_rx.clone()).await?;
            save_ring(&meta, &ring).await?;
            (ring, membership)
        }
    };

    let stats = Arc::new(Stats::default());
    let (repair_tx, repair_rx) = mpsc::unbounded_channel();
    let store = Arc::new(LocalStore::new(
        StoreIdentity {
            node_id: info.node_id,
            restart_mark: info.restart_mark,
            holds_data,
            write_sequence: meta.write_sequence(),
            tree_geometry: kv_cluster::tree::TreeGeometry::of_ring(&ring),
        },
        engine.clone(),
        commit.clone(),
        meta.epochs(),
        stats.clone(),
        repair_tx,
        StoragePool::start(config.storage_threads as usize)
            .context("cannot start the storage threads")?,
    ));
    let hints = {
        let store = store.clone();
        let partitions = ring.partitions;
        tokio::task::spawn_blocking(move || crate::hints::HintStore::open(store, partitions))
            .await?
            .context("cannot read the hints held for other nodes")?
    };
    let view = ClusterView::new(
        info.node_id,
        address.clone(),
        ring,
        membership,
        config.phi_threshold,
    );
    let node = Arc::new(Node {
        engine_kind,
        view,
        store,
        meta,
        peers,
        outbox: Default::default(),
        stats,
        generation: info.generation,
        restart_mark: info.restart_mark,
        warnings: crate::stats::LogLimiter::new(Duration::from_secs(10)),
        hints: Arc::new(hints),
        reaper: Default::default(),
        transfers: Default::default(),
        waiting_change: Default::default(),
        leave_signal: shutdown_tx.clone(),
        config: config.clone(),
    });
    if node.meta.is_leaving() {
        tracing::info!("this node is being decommissioned; it goes on handing over its partitions");
        node.view.set_leaving();
    }
    node.view.beat(node.generation, node.store.holds_data());

    let ring = node.view.ring();
    tracing::info!(
        node_id = %format_node_id(info.node_id),
        %address,
        data_dir = %data_dir,
        engine = %engine_kind,
        sync = ?config.sync,
        cluster_id = %ring.cluster_id,
        ring_version = ring.version,
        generation = info.generation,
        new_node = info.first_start,
        "node started"
    );

    // A node that rejoins with a ring first checks that its peers accept it.
    check_identity_with_peers(&node).await?;

    let limit = config.grpc_message_limit();
    // The server pings silent connections too and closes those whose peer
    // does not answer, so a request that the network held up for long (a
    // partition) is never applied late; tombstone reaping relies on that.
    let server = Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(config.peer_keepalive()))
        .http2_keepalive_timeout(Some(config.peer_keepalive()))
        .add_service(
            KvServer::new(KvService { node: node.clone() })
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        )
        .add_service(
            AdminServer::new(AdminService { node: node.clone() })
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        )
        .add_service(
            PeerServer::new(PeerService { node: node.clone() })
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        );
    let mut server_shutdown = shutdown_rx.clone();
    let server_task = tokio::spawn(server.serve_with_incoming_shutdown(incoming, async move {
        let _ = server_shutdown.changed().await;
    }));

    let gossip_task = tokio::spawn(node.clone().run_gossip(shutdown_rx.clone()));
    let repair_task = tokio::spawn(run_repairs(node.clone(), repair_rx, shutdown_rx.clone()));
    let handoff_task = tokio::spawn(node.clone().run_hint_delivery(shutdown_rx.clone()));
    let aae_task = tokio::spawn(node.clone().run_anti_entropy(shutdown_rx.clone()));
    let reaper_task = tokio::spawn(node.clone().run_reaper(shutdown_rx.clone()));
    let transfer_task = tokio::spawn(node.clone().run_transfers(shutdown_rx.clone()));

    let served = server_task.await?;
    let _ = shutdown_tx.send(true);
    let _ = gossip_task.await;
    let _ = repair_task.await;
    let _ = handoff_task.await;
    let _ = aae_task.await;
    let _ = reaper_task.await;
    let _ = transfer_task.await;
    served.context("the gRPC server failed")?;

    // Final flush, then the clean-stop marker.
    tracing::info!("stopping: flushing storage");
    let node_for_stop = node.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        node_for_stop.store.commit().shutdown()?;
        node_for_stop.meta.mark_clean_stop()?;
        Ok(())
    })
    .await??;
    tracing::info!("node stopped cleanly");
    Ok(())
}

fn check_stored_shape(ring: &Ring, config: &Config) -> anyhow::Result<()> {
    if ring.replicas != config.n {
        bail!(
            "--n {} differs from N={} of cluster {} stored in the data directory; restart with --n {}",
            config.n,
            ring.replicas,
            ring.cluster_id,
            ring.replicas
        );
    }
    if ring.partitions != config.partitions {
        bail!(
            "--partitions {} differs from Q={} of cluster {} stored in the data directory; restart with --partitions {}",
            config.partitions,
            ring.partitions,
            ring.cluster_id,
            ring.partitions
        );
    }
    Ok(())
}

async fn save_ring(meta: &Meta, ring: &Ring) -> anyhow::Result<()> {
    // Called before the node is shared, so a short blocking write is fine here.
    tokio::task::block_in_place(|| meta.save_ring(ring))?;
    Ok(())
}

/// Gossips once with the seeds and the ring's nodes. A rejection of this
/// node's identity (another cluster, a duplicate or removed id) stops the
/// node with that message.
async fn check_identity_with_peers(node: &Arc<Node>) -> anyhow::Result<()> {
    let ring = node.view.ring();
    let mut targets: Vec<String> = node.config.seeds.clone();
    let ring_nodes: Vec<NodeId> = ring.nodes();
    for id in ring_nodes {
        if id == node.node_id() {
            continue;
        }
        if let Some(address) = node.view.address_of(id) {
            targets.push(address);
        }
    }
    targets.retain(|target| *target != node.view.address);
    targets.sort();
    targets.dedup();

    let checks = targets.iter().map(|target| {
        let node = node.clone();
        let target = target.clone();
        async move { (target.clone(), node.gossip_with(&target).await) }
    });
    let results = tokio::time::timeout(Duration::from_secs(5), futures::future::join_all(checks))
        .await
        .unwrap_or_default();
    for (target, result) in results {
        if let Err(status) = result {
            if crate::gossip::is_identity_refusal(&status) {
                bail!("peer {target} rejected this node: {}", status.message());
            }
        }
    }
    Ok(())
}

/// Repairs keys whose local record turned out unreadable.
async fn run_repairs(
    node: Arc<Node>,
    mut keys: mpsc::UnboundedReceiver<Vec<u8>>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            key = keys.recv() => {
                let Some(key) = key else { return };
                node.repair_key(&key).await;
            }
            _ = shutdown.changed() => return,
        }
    }
}

fn spawn_signal_handler(shutdown: watch::Sender<bool>) {
    tokio::spawn(async move {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(error) => {
                    tracing::error!(%error, "cannot listen for SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("received SIGINT"),
            _ = terminate.recv() => tracing::info!("received SIGTERM"),
        }
        let _ = shutdown.send(true);
    });
}
